"""PGD adversarial training (Madry et al. 2018), the paper's AT baseline (Stutz et al. 2021, supplement Sec. F, G)."""

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lit_robust.attacks import restore_modes
from lit_robust.errors import check
from lit_robust.modules.base import AdversarialModule, step_output
from lit_robust.modules.losses import noisy_labels, smoothed_cross_entropy


class PGDAT(AdversarialModule):
    """min_w E[max_{||delta||_inf <= epsilon} CE(f(x + delta; w), y)], the inner max by PGD.

    Per training step with PGD-K: K forward and K input-only backward passes for the attack, then
    one forward and one full backward pass for the weight update (PGD-7: 8 forward, 7 input-only
    backward, 1 full backward). ``ignore_incorrect`` and ``prevent_label_leaking`` add one forward
    pass without gradients (the clean prediction).

    Options of Stutz et al. 2021 (supplement Sec. G) that are plain AT with a switch:

    Args:
        label_smoothing: tau of label smoothing, p_y = 1 - tau, p_i = tau / (K - 1); weight update only.
        label_noise: tau of label noise, a fresh tau fraction of random labels per batch; weight update only.
        ignore_incorrect: no adversarial example for training examples the model misclassifies.
        prevent_label_leaking: attack the predicted instead of the true label.
        mixup_alpha: alpha of mixup inside AT (Yan et al. 2022, Table 4: 1.4; 0: off), see :meth:`mixup`.
            It cannot be combined with the four options above, which need hard labels.
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, label_smoothing: float = 0.0, label_noise: float = 0.0,
                 ignore_incorrect: bool = False, prevent_label_leaking: bool = False, mixup_alpha: float = 0.0,
                 **kwargs: Any) -> None:
        check(0.0 <= label_smoothing < 1.0, "label_smoothing", label_smoothing, "a number in [0, 1)")
        check(0.0 <= label_noise <= 1.0, "label_noise", label_noise, "a number in [0, 1]")
        check(mixup_alpha >= 0, "mixup_alpha", mixup_alpha, "a number >= 0")
        check(mixup_alpha == 0 or not (label_smoothing or label_noise or ignore_incorrect or prevent_label_leaking),
              "mixup_alpha", mixup_alpha,
              "0 when label_smoothing, label_noise, ignore_incorrect or prevent_label_leaking is set")
        super().__init__(*args, **kwargs)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        h = self.hparams
        target = y
        if h.mixup_alpha > 0:
            x, target, y = self.mixup(x, y)
        # inner maximisation
        y_attack = target
        if h.ignore_incorrect or h.prevent_label_leaking:
            predicted = self.clean_prediction(x)
            y_attack = predicted if h.prevent_label_leaking else y
        x_adv = self.train_attack(self.model, x, y_attack)
        if h.ignore_incorrect:
            x_adv = torch.where((predicted == y).view(-1, 1, 1, 1), x_adv, x)
        # outer minimisation
        logits = self.model(x_adv)
        loss = self.outer_loss(logits, target)
        return step_output(loss, logits, y)

    def mixup(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Mixup (Zhang et al. 2018) of the clean batch before the attack, as Rice et al. use it inside AT
        (Yan et al. 2022, Table 4).

        One lambda ~ Beta(alpha, alpha) per batch and a random permutation pi give
        x_mix = lambda x + (1 - lambda) x[pi] and the target lambda e_y + (1 - lambda) e_y[pi]. PGD then
        maximises, and the weight update minimises, the cross-entropy against this soft target, which
        equals lambda CE(., y) + (1 - lambda) CE(., y[pi]) (Rice et al.'s mixup criterion).

        Returns:
            The mixed inputs, the soft targets (B, K) and, for ``train/rerr``, the label of larger weight.
        """
        num_classes = self.num_classes(x)
        alpha = self.hparams.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(y), device=y.device)
        target = lam * F.one_hot(y, num_classes).float() + (1 - lam) * F.one_hot(y[perm], num_classes).float()
        return lam * x + (1 - lam) * x[perm], target, y if lam >= 0.5 else y[perm]

    def num_classes(self, x: Tensor) -> int:
        """The number of classes: the data module's, else the network's (its ``num_classes``, else the width
        of its output on one example, in eval mode, so that no batch-normalisation statistic changes)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        num_classes = getattr(datamodule, "num_classes", None) or getattr(self.model, "num_classes", None)
        if num_classes is None:
            with torch.no_grad(), restore_modes(self.model, False):
                num_classes = self.model(x[:1]).shape[1]
        return int(num_classes)

    def clean_prediction(self, x: Tensor) -> Tensor:
        """Predicted labels on clean inputs, in the attack's BN mode, without gradients."""
        with torch.no_grad(), restore_modes(self.model, self.train_attack.bn_mode == "train"):
            return self.model(x).argmax(dim=1)

    def outer_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy for the weight update, with label smoothing or label noise when set; ``y`` are
        labels, or soft targets (B, K) under mixup."""
        h = self.hparams
        if h.label_noise > 0:
            y = noisy_labels(y, h.label_noise, logits.shape[1])
        if h.label_smoothing > 0:
            return smoothed_cross_entropy(logits, y, h.label_smoothing)
        return F.cross_entropy(logits, y)
