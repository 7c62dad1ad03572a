"""Average-case flatness, E_nu[RLoss(w + nu)] - RLoss(w) (Stutz et al. 2021, Eq. 3; supplement Sec. D).

Per batch, ``samples`` fresh nu uniformly on the per-layer sphere of B_xi(w); RLoss(w + nu) by PGD with
``pgd_steps`` iterations and ``pgd_restarts`` restarts, RLoss(w) by PGD with ``reference_pgd_steps`` and
``reference_pgd_restarts`` (worst case per example). With ``loss="loss"`` the clean cross-entropy instead.
The standard deviation is over the samples (Stutz et al. 2021, supplement Fig. D). See
:mod:`lit_robust.measures.flatness` for the computation and where it follows the paper's text.
"""

from typing import Any, Dict, Optional

from lit_robust.attacks import Norm
from lit_robust.measures.base import LossKind
from lit_robust.measures.flatness import PaperFlatness
from lit_robust.measures.registry import register_measure
from lit_robust.measures.settings import FlatnessSettings
from lit_robust.weights import Selection


@register_measure("avg_loss", loss="loss")
@register_measure("avg_rloss", loss="rloss")
class AverageCaseFlatness(PaperFlatness):
    """Average-case flatness in RLoss or clean Loss, ``avg_rloss`` / ``avg_loss``.

    Args:
        loss: ``"rloss"`` (robust loss) or ``"loss"`` (clean loss).
        xi: relative radius of B_xi(w) (0.5).
        samples: weight perturbations per batch (10).
        pgd_steps: PGD iterations on each perturbed network (20).
        pgd_restarts: PGD restarts on each perturbed network (1).
        reference_pgd_steps: PGD iterations of the reference (20).
        reference_pgd_restarts: PGD restarts of the reference (10).
        parallel: perturbations per ``vmap``-ed pass; 1 for the sequential path.
        epsilon: radius of the input threat model (see :class:`~lit_robust.measures.base.Measure`).
        step_size: PGD step size.
        norm: input threat model.
        random_start: PGD starts at a random point of the input ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: tensors that make up B_xi(w) (see :func:`~lit_robust.weights.select_parameters`).
    """

    prefix = "avg"

    def __init__(self, *, loss: LossKind = "rloss", xi: float = 0.5, samples: int = 10, pgd_steps: int = 20,
                 pgd_restarts: int = 1, reference_pgd_steps: int = 20, reference_pgd_restarts: int = 10,
                 parallel: int = 10, epsilon: Optional[float] = None, step_size: Optional[float] = None,
                 norm: Optional[Norm] = None, random_start: bool = True, max_examples: Optional[int] = 1000,
                 which: Selection = "all") -> None:
        super().__init__(loss=loss, reference_pgd_steps=reference_pgd_steps,
                         reference_pgd_restarts=reference_pgd_restarts, parallel=parallel, epsilon=epsilon,
                         step_size=step_size, norm=norm, random_start=random_start, max_examples=max_examples,
                         which=which)
        self.xi, self.samples, self.pgd_steps, self.pgd_restarts = xi, samples, pgd_steps, pgd_restarts
        self.meter()  # the checks of the settings, now

    @classmethod
    def from_settings(cls, settings: FlatnessSettings, options: Dict[str, Any], **fixed: Any) -> "AverageCaseFlatness":
        return cls(xi=options["average_xi"], samples=settings.samples, pgd_steps=settings.pgd_steps, pgd_restarts=1,
                   reference_pgd_steps=settings.pgd_steps, reference_pgd_restarts=settings.pgd_restarts,
                   parallel=options["parallel"], max_examples=None, **fixed)

    def meter_settings(self) -> Dict[str, object]:
        return dict(average_xi=self.xi, samples=self.samples, average_pgd_steps=self.pgd_steps,
                    average_pgd_restarts=self.pgd_restarts)


average_case_flatness = AverageCaseFlatness.once
"""The functional twin: ``average_case_flatness(model, loader, reduce=None, generator=None, **settings)``."""
