"""Adversarial training with additional pseudo-labelled data, robust self-training (Carmon et al. 2019)."""

from typing import Any, Literal

from typing_extensions import override

from lit_robust.data.pseudo_labeled import PseudoLabeledDataModule
from lit_robust.errors import ConfigurationError, check_choice
from lit_robust.modules.objectives import ObjectiveModule


class UnlabeledAT(ObjectiveModule):
    """Robust self-training, RST (Carmon et al. 2019, "Unlabeled data improves adversarial
    robustness"; Stutz et al. 2021, supplement Sec. G, "Additional unlabeled examples").

    The data module (:class:`~lit_robust.data.PseudoLabeledDataModule`) makes every batch half
    labelled, half pseudo-labelled; both halves are treated alike (the training step of
    :class:`~lit_robust.modules.objectives.ObjectiveModule` on all of the batch), by the robust loss of AT
    (PGD on cross-entropy, Stutz et al. 2021, supplement Sec. F) or of TRADES (supplement Eq. 13, the official
    code's default, lambda = 6).

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
        super().__init__(*args, lam=lam, **kwargs)

    @property
    def objective(self) -> str:
        """``base_loss``: its training attack is PGD on cross-entropy (AT) or on KL(f(x) || f(x + delta))
        (TRADES), last iterate, eval mode."""
        return self.hparams.base_loss

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and not isinstance(datamodule, PseudoLabeledDataModule):
            raise ConfigurationError(f"data={type(datamodule).__name__!r} is not allowed: data must be "
                                     "lit_robust.data.PseudoLabeledDataModule for UnlabeledAT.")
