"""What the measures of the Hessian of the loss in weight space share: the loss they differentiate.

The Hessian is that of the mean RLoss at adversarial examples found at w by PGD (``steps`` iterations,
``restarts`` restarts, worst case per example) and then held fixed, or of the mean clean Loss.
"""

from typing import Optional

from lit_robust.attacks import Norm
from lit_robust.errors import check_choice
from lit_robust.measures.base import LossKind, Measure
from lit_robust.weights import Selection


class HessianMeasure(Measure):
    """A measure of the Hessian of the mean RLoss (at fixed PGD examples) or of the mean clean Loss.

    Args:
        loss: ``"rloss"`` (at adversarial examples found at w) or ``"loss"``.
        steps: PGD iterations of the adversarial examples (20).
        restarts: PGD restarts, worst case per example (1).
        epsilon: radius of the input threat model (see :class:`~lit_robust.measures.base.Measure`).
        step_size: PGD step size.
        norm: input threat model.
        random_start: PGD starts at a random point of the ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: tensors of the weight space (see :func:`~lit_robust.weights.select_parameters`).
    """

    def __init__(self, *, loss: LossKind = "rloss", steps: int = 20, restarts: int = 1, epsilon: Optional[float] = None,
                 step_size: Optional[float] = None, norm: Optional[Norm] = None, random_start: bool = True,
                 max_examples: Optional[int] = 1000, which: Selection = "all") -> None:
        super().__init__(epsilon=epsilon, step_size=step_size, norm=norm, random_start=random_start,
                         max_examples=max_examples, which=which)
        check_choice(loss, "loss", ("rloss", "loss"))
        self.loss, self.steps, self.restarts = loss, steps, restarts
