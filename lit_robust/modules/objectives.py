"""The base objectives that TRADES, MART and the variants built on top of them (AWP, AMP) share.

Each base objective is a pair: the training attack (inner maximisation over the input) and the
outer loss on the clean and adversarial examples. :class:`BaseLossModule` is an
:class:`~lit_robust.modules.base.AdversarialModule` whose base objective is an argument.

- ``"at"`` (Madry et al.): PGD on cross-entropy from a uniform start; CE(f(x_adv), y).
- ``"trades"`` (papers/001 Eq. 13): PGD on KL(f(x) || f(x + delta)) from 0.001 * N(0, 1), as the
  official code; CE(f(x), y) + lambda * KL(f(x) || f(x_adv)).
- ``"mart"`` (papers/001 Eq. 14-15): PGD on cross-entropy from 0.001 * N(0, 1), as the official
  code; BCE(f(x_adv), y) + lambda * KL(f(x) || f(x_adv)) * (1 - f_y(x)).

Every attack runs in eval mode and returns its last iterate. Forward passes of the outer loss:
one for ``"at"`` (adversarial), two for ``"trades"`` and ``"mart"`` (clean first, then adversarial);
the ``"trades"`` attack adds one clean forward pass without gradients.
"""

from typing import Any, Callable, Literal, Tuple

import torch.nn.functional as F
from torch import Tensor

from lit_robust.attacks import PGD, Norm
from lit_robust.errors import check, check_choice
from lit_robust.losses import mart_loss, trades_loss
from lit_robust.modules.base import AdversarialModule

BaseLoss = Literal["at", "trades", "mart"]
SMALL_START_STD = 0.001


def base_attack(base: BaseLoss, epsilon: float, step_size: float, steps: int, norm: Norm) -> PGD:
    """The training attack of ``base``: PGD-``steps``, last iterate, model in eval mode.

    Args:
        base: ``"at"``, ``"trades"`` or ``"mart"``.
        epsilon: radius of the threat model.
        step_size: PGD step size.
        steps: PGD iterations.
        norm: ``"linf"`` or ``"l2"``.
    """
    if base == "trades":
        return PGD(epsilon, step_size, steps, norm=norm, loss="kl", keep_best=False, init_std=SMALL_START_STD)
    if base == "mart":
        return PGD(epsilon, step_size, steps, norm=norm, keep_best=False, init_std=SMALL_START_STD)
    return PGD(epsilon, step_size, steps, norm=norm, keep_best=False)


def base_loss(base: BaseLoss, forward: Callable[[Tensor], Tensor], x: Tensor, x_adv: Tensor, y: Tensor,
              lam: float) -> Tuple[Tensor, Tensor]:
    """The outer loss of ``base`` and the adversarial logits it used.

    Args:
        base: ``"at"``, ``"trades"`` or ``"mart"``.
        forward: the network as a function of its input (the model, or the model at perturbed weights).
        x: clean inputs.
        x_adv: adversarial inputs from :func:`base_attack`.
        y: labels.
        lam: weight lambda of TRADES' and MART's KL term (unused for ``"at"``).
    """
    if base == "at":
        adversarial_logits = forward(x_adv)
        return F.cross_entropy(adversarial_logits, y), adversarial_logits
    clean_logits = forward(x)
    adversarial_logits = forward(x_adv)
    outer = trades_loss if base == "trades" else mart_loss
    return outer(clean_logits, adversarial_logits, y, lam), adversarial_logits


class BaseLossModule(AdversarialModule):
    """An :class:`~lit_robust.modules.base.AdversarialModule` trained on the base objective ``base_loss``
    (:func:`base_attack` for the inner maximisation, :meth:`robust_loss` for the outer loss).

    Args:
        base_loss: ``"at"``, ``"trades"`` or ``"mart"``.
        lam: weight lambda of the KL term of ``"trades"`` and ``"mart"`` (1, 3, 6 or 9 in papers/001).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, base_loss: BaseLoss = "at", lam: float = 6.0, **kwargs: Any) -> None:
        check_choice(base_loss, "base_loss", ("at", "trades", "mart"))
        check(lam >= 0, "lam", lam, "a number >= 0")
        super().__init__(*args, **kwargs)

    def make_train_attack(self) -> PGD:
        """The training attack of ``base_loss`` (see :func:`base_attack`)."""
        h = self.hparams
        return base_attack(h.base_loss, self.training_epsilon, h.step_size, h.train_steps, h.norm)

    def robust_loss(self, forward: Callable[[Tensor], Tensor], x: Tensor, x_adv: Tensor,
                    y: Tensor) -> Tuple[Tensor, Tensor]:
        """The outer loss of ``base_loss`` for the network ``forward``, and its adversarial logits
        (see :func:`base_loss`)."""
        return base_loss(self.hparams.base_loss, forward, x, x_adv, y, self.hparams.lam)
