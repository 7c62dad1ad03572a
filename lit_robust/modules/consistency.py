"""Consistency regularisation for adversarial training (Tack et al., AAAI 2022)."""

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError, check
from lit_robust.modules.base import AdversarialModule, step_output
from lit_robust.modules.losses import jensen_shannon


class Consistency(AdversarialModule):
    """AT on two augmentations of every image, plus the Jensen-Shannon divergence between the
    predictions on the two *attacked* augmentations (Tack et al., "Consistency regularization for
    adversarial robustness", AAAI 2022):

        (1/2) sum_{i=1,2} CE(f(x_i^adv), y) + lambda * JS(softmax(f(x_1^adv) / T), softmax(f(x_2^adv) / T)),

    where x_1, x_2 are two independent augmentations of x and x_i^adv = x_i + delta_i, each delta_i
    found by PGD on CE(f(x_i + delta), y) for its own view. The defaults lambda = 1 and T = 0.5 are the
    official code's (alinlab/consistency-adversarial). The two views come from the data module:
    :meth:`setup` sets ``train_views = 2`` on it (every data module of :mod:`lit_robust.data` that uses
    the base training loader draws the augmentation twice, see
    :class:`~lit_robust.data.views.AugmentedViews`; one with a training loader of its own, as
    PseudoLabeledDataModule, is an error before training), and a batch that is not ``([X_1, X_2], Y)``
    is an error. The augmentation is the data module's (the paper's best is AutoAugment with Cutout, the
    ``autoaugment`` option of the CIFAR data modules; on digits, ``shift``); without any, the two
    views are the same image, still attacked from two random starts.

    As in the official code, the two views are attacked in one call on the 2B-example batch and the
    update's forward pass runs on both views together (batch normalisation sees 2B examples). Each
    example still gets its own perturbation: PGD runs in eval mode and ascends the sum of
    per-example losses, so the perturbation of one view never depends on the other. The JS term is
    computed exactly (see :func:`~lit_robust.modules.losses.jensen_shannon`), where the official code clamps
    the mixture at 1e-8. ``train/rloss`` and ``train/rerr`` are measured on both adversarial views.

    Per training step with PGD-K, on a batch of B images (2B views): K forward and K input-only
    backward passes for the attack, one forward and one full backward pass for the update, each over
    2B examples (PGD-7: 8 forward, 7 input-only backward, 1 full backward; twice PGD-AT's examples).

    Args:
        lam: weight lambda of the consistency (JS) term (1 in the official code).
        temperature: temperature T of the predictions compared by the JS term (0.5 in the official code).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    train_views = 2

    def __init__(self, *args: Any, lam: float = 1.0, temperature: float = 0.5, **kwargs: Any) -> None:
        check(lam >= 0, "lam", lam, "a number >= 0 (1 in the official code)")
        check(temperature > 0, "temperature", temperature, "a number > 0 (0.5 in the official code)")
        super().__init__(*args, **kwargs)

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None:
            if not (isinstance(datamodule, AdversarialDataModule)
                    and type(datamodule).train_dataloader is AdversarialDataModule.train_dataloader):
                raise ConfigurationError(
                    f"data={type(datamodule).__name__!r} is not allowed: data must be a data module of "
                    "lit_robust.data whose training loader is AdversarialDataModule's (e.g. DigitsDataModule, "
                    f"CIFAR10DataModule), which gives {self.train_views} augmented views of every training image "
                    f"to {type(self).__name__}.")
            datamodule.train_views = self.train_views

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        views, y = self.inputs_and_targets(batch)
        if not (isinstance(views, (list, tuple)) and len(views) == self.train_views):
            raise ConfigurationError(
                f"the training batches give one view of each image, not {self.train_views}: "
                f"{type(self).__name__} needs batches ([X_1, X_2], Y) of two augmented views, which the data "
                "modules of lit_robust.data give when their train_views is 2 (set by this module in setup).")
        x = torch.cat(list(views))
        y_views = y.repeat(self.train_views)
        # inner maximisation: every view of every image attacked on its own
        x_adv = self.train_attack(self.model, x, y_views)
        # outer minimisation: CE on both adversarial views + lambda * JS between their predictions
        logits = self.model(x_adv)
        logits_1, logits_2 = logits.chunk(self.train_views)
        h = self.hparams
        loss = F.cross_entropy(logits, y_views) + h.lam * jensen_shannon(logits_1, logits_2, h.temperature)
        return step_output(loss, logits, y_views)
