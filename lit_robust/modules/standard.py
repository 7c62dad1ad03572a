"""Standard (clean) training, the reference point of every comparison (Stutz et al. 2021, supplement Sec. F)."""

from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lit_robust.metric_names import TRAIN_ERR, TRAIN_LOSS
from lit_robust.modules.base import AdversarialModule


class StandardTraining(AdversarialModule):
    """min_w E[CE(f(x; w), y)] on clean examples only; no training attack.

    Validation and test are the same as for every other variant (clean and PGD), so its robust
    error is measured, not trained for. Logs ``train/loss`` and ``train/err`` (clean).

    Per training step: 1 forward pass, 1 full backward pass.

    Args:
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments (``train_steps`` unused).
    """

    def make_train_attack(self) -> None:
        """No training attack."""
        return None

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        """The clean cross-entropy (``loss``) with the clean ``logits`` and labels ``y`` for :meth:`log_training`."""
        x, y = self.inputs_and_targets(batch)
        logits = self.model(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits, "y": y}

    def log_training(self, outputs: Mapping[str, Any]) -> None:
        """Log ``train/loss`` and the clean ``train/err`` (no adversarial examples in training)."""
        logits, y = outputs["logits"].detach(), outputs["y"]
        with torch.no_grad():
            err = (logits.argmax(dim=1) != y).float().mean()
        self.log_dict({TRAIN_LOSS: outputs["loss"].detach(), TRAIN_ERR: err}, on_step=True, on_epoch=True)
