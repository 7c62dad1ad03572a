"""Fast adversarial training: FGSM with a random start (Wong et al. 2020, "Fast is better than free")."""

from typing import Any

from lit_robust.attacks import FGSM
from lit_robust.errors import check
from lit_robust.modules.pgd_at import PGDAT


class FastAT(PGDAT):
    """Adversarial training whose inner maximisation is one FGSM step from a uniform random start.

    The step is ``step_factor * epsilon`` (1.25 in Wong et al.), projected back onto the L-inf ball
    and [0, 1]; the outer loss and every option are PGD-AT's (:class:`~lit_robust.modules.pgd_at.PGDAT`).
    ``train_steps`` is unused; ``step_size`` is the validation and test PGD's. Wong et al. pair it
    with a cyclic learning rate (``lr_scheduler_interval: step``) and few epochs; the attack runs in
    eval mode, as all of this project's training attacks, where their code attacks in train mode.

    Per training step: 2 forward passes, 1 input-only backward pass, 1 full backward pass.

    Args:
        step_factor: FGSM step size relative to epsilon.
        **kwargs: :class:`~lit_robust.modules.pgd_at.PGDAT` arguments (``norm`` must be ``"linf"``).
    """

    def __init__(self, *args: Any, step_factor: float = 1.25, **kwargs: Any) -> None:
        check(step_factor > 0, "step_factor", step_factor, "a number > 0 (1.25 in Wong et al.)")
        super().__init__(*args, **kwargs)

    def make_train_attack(self) -> FGSM:
        """FGSM with a random start, step ``step_factor * epsilon``."""
        h = self.hparams
        check(h.norm == "linf", "norm", h.norm, "'linf' (FGSM is an L-inf attack)")
        return FGSM(self.training_epsilon, step_factor=h.step_factor)
