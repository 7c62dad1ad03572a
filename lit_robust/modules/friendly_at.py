"""Friendly adversarial training, PGD-tau (Zhang et al. 2020; Stutz et al. 2021, supplement Sec. G)."""

from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lit_robust.attacks import FriendlyPGD
from lit_robust.modules.base import AdversarialModule, step_output


class FriendlyAT(AdversarialModule):
    """Adversarial training on "friendly" adversarial examples: PGD-K-tau (Zhang et al. 2020,
    "Attacks which do not kill training make adversarial learning stronger", Algorithm 1;
    Stutz et al. 2021, supplement Sec. G).

    The inner maximisation stops, per example, tau iterations after the label flips
    (:class:`~lit_robust.attacks.FriendlyPGD`); with tau = 0 an example the model misclassifies
    gets no adversarial example. The outer loss is cross-entropy on these examples. PGD starts at
    x, as the paper's Algorithm 1 (the official code adds 0.001 * N(0, 1)).

    Per training step with K = ``train_steps``: at most K forward and K input-only backward passes
    for the attack, each over the examples still running, then one forward and one full backward
    pass (PGD-7-tau: at most 8 forward, 7 input-only backward, 1 full backward).

    Args:
        tau: iterations after the label flips (0, 1, 2 or 3 in Stutz et al. 2021).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, tau: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def make_train_attack(self) -> FriendlyPGD:
        """Early-stopped PGD-K-tau from x, last iterate, eval mode."""
        return FriendlyPGD(**self.train_attack_arguments(), tau=self.hparams.tau)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        # inner maximisation, stopped tau iterations after each example's label flips
        x_adv = self.train_attack(self.model, x, y)
        # outer minimisation: cross-entropy on the friendly adversarial examples
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        return step_output(loss, logits, y)
