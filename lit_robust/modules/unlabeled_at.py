"""Adversarial training with additional pseudo-labelled data, robust self-training (Carmon et al. 2019)."""

from typing import Any, Dict, Literal

from torch import Tensor

from lit_robust.data.pseudo_labeled import PseudoLabeledDataModule
from lit_robust.errors import ConfigurationError, check, check_choice
from lit_robust.modules.base import step_output
from lit_robust.modules.objectives import ObjectiveModule


class UnlabeledAT(ObjectiveModule):
    """Robust self-training, RST (Carmon et al. 2019, "Unlabeled data improves adversarial
    robustness"; papers/001 Sec. G, "Additional unlabeled examples").

    The data module (:class:`~lit_robust.data.PseudoLabeledDataModule`) makes every batch half
    labelled, half pseudo-labelled; both halves are treated alike, by the robust loss of AT
    (PGD on cross-entropy, papers/001 Sec. F) or of TRADES (papers/001 Eq. 13, the official code's
    default, lambda = 6).

    Per training step with PGD-K: for ``"at"``, K + 1 forward, K input-only backward and one full
    backward pass (PGD-7: 8, 7, 1); for ``"trades"``, K + 3 forward (a clean pass without gradients
    for the attack's target, K attack iterations, clean and adversarial for the update), K
    input-only backward and one full backward pass (PGD-7: 10, 7, 1).

    Args:
        base_loss: ``"at"`` or ``"trades"``.
        lam: weight lambda of TRADES' KL term (unused for ``"at"``).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, base_loss: Literal["at", "trades"] = "trades", lam: float = 6.0,
                 **kwargs: Any) -> None:
        check_choice(base_loss, "base_loss", ("at", "trades"))
        check(lam >= 0, "lam", lam, "a number >= 0 (6 in the paper)")
        super().__init__(*args, **kwargs)

    @property
    def objective(self) -> str:
        """``base_loss``: its training attack is PGD on cross-entropy (AT) or on KL(f(x) || f(x + delta))
        (TRADES), last iterate, eval mode."""
        return self.hparams.base_loss

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and not isinstance(datamodule, PseudoLabeledDataModule):
            raise ConfigurationError(f"data={type(datamodule).__name__!r} is not allowed: data must be "
                                     "lit_robust.data.PseudoLabeledDataModule for UnlabeledAT.")

    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)  # half labelled, half pseudo-labelled
        # inner maximisation
        x_adv = self.train_attack(self.model, x, y)
        # outer minimisation: the robust loss of AT or TRADES on all of the batch
        loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
        return step_output(loss, adversarial_logits, y)
