"""Worst-case flatness, max_{nu in B_xi(w)} RLoss(w + nu) - RLoss(w) (Stutz et al. 2021, Eq. 5-7).

Per batch, :func:`~lit_robust.measures.flatness.joint_ascent` on nu and delta, ``ascent_restarts`` restarts
of ``ascent_iterations`` iterations; the batch's maximum over the restarts of the mean loss is the first term.
The reference is RLoss(w) by PGD with ``reference_pgd_steps`` and ``reference_pgd_restarts`` (worst case per
example). With ``loss="loss"`` the clean cross-entropy, ascent on nu alone. The standard deviation is over
the restarts.
"""

from typing import Any, Dict, Optional

from lit_robust.attacks import Norm
from lit_robust.measures.base import LossKind
from lit_robust.measures.flatness import PaperFlatness
from lit_robust.measures.registry import register_measure
from lit_robust.measures.settings import FlatnessSettings
from lit_robust.weights import Selection


@register_measure("worst_loss", loss="loss")
@register_measure("worst_rloss", loss="rloss")
class WorstCaseFlatness(PaperFlatness):
    """Worst-case flatness in RLoss or clean Loss, ``worst_rloss`` / ``worst_loss``.

    Args:
        loss: ``"rloss"`` (robust loss) or ``"loss"`` (clean loss).
        xi: relative radius of B_xi(w) (0.003).
        ascent_iterations: iterations of the joint ascent (20).
        ascent_restarts: restarts of the joint ascent per batch, maximum taken (10).
        lr: learning rate of nu after per-layer normalisation of its gradient (0.001).
        reference_pgd_steps: PGD iterations of the reference (20).
        reference_pgd_restarts: PGD restarts of the reference (10).
        parallel: restarts per ``vmap``-ed pass; 1 for the sequential path.
        epsilon: radius of the input threat model (see :class:`~lit_robust.measures.base.Measure`).
        step_size: PGD step size.
        norm: input threat model.
        random_start: PGD and delta start at a random point of the input ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: tensors that make up B_xi(w) (see :func:`~lit_robust.weights.select_parameters`).
    """

    prefix = "worst"

    def __init__(self, *, loss: LossKind = "rloss", xi: float = 0.003, ascent_iterations: int = 20,
                 ascent_restarts: int = 10, lr: float = 0.001, reference_pgd_steps: int = 20,
                 reference_pgd_restarts: int = 10, parallel: int = 10, epsilon: Optional[float] = None,
                 step_size: Optional[float] = None, norm: Optional[Norm] = None, random_start: bool = True,
                 max_examples: Optional[int] = 1000, which: Selection = "all") -> None:
        super().__init__(loss=loss, reference_pgd_steps=reference_pgd_steps,
                         reference_pgd_restarts=reference_pgd_restarts, parallel=parallel, epsilon=epsilon,
                         step_size=step_size, norm=norm, random_start=random_start, max_examples=max_examples,
                         which=which)
        self.xi, self.lr = xi, lr
        self.ascent_iterations, self.ascent_restarts = ascent_iterations, ascent_restarts
        self.meter()  # the checks of the settings, now

    @classmethod
    def from_settings(cls, settings: FlatnessSettings, options: Dict[str, Any], **fixed: Any) -> "WorstCaseFlatness":
        return cls(xi=options["worst_xi"], ascent_iterations=settings.ascent_iterations,
                   ascent_restarts=settings.ascent_restarts, lr=options["worst_lr"],
                   reference_pgd_steps=settings.pgd_steps, reference_pgd_restarts=settings.pgd_restarts,
                   parallel=options["parallel"], max_examples=None, **fixed)

    def meter_settings(self) -> Dict[str, object]:
        return dict(worst_xi=self.xi, ascent_iterations=self.ascent_iterations,
                    ascent_restarts=self.ascent_restarts, worst_lr=self.lr)


worst_case_flatness = WorstCaseFlatness.once
"""The functional twin: ``worst_case_flatness(model, loader, reduce=None, generator=None, **settings)``."""
