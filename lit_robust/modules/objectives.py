"""The base objectives that TRADES, MART and the variants built on top of them (AWP, AMP) share.

Each base objective is a pair, one row of the table :data:`OBJECTIVES`: the training attack (inner
maximisation over the input) and the outer loss on the clean and adversarial examples.
:class:`ObjectiveModule` trains on the objective it names (TRADES, MART, UnlabeledAT);
:class:`BaseLossModule` is one whose base objective is the argument ``base_loss`` (AWP, AMP, SAM).
A new base objective is a new row.

- ``"at"`` (Madry et al.): PGD on cross-entropy from a uniform start; CE(f(x_adv), y).
- ``"trades"`` (Stutz et al. 2021, supplement Eq. 13): PGD on KL(f(x) || f(x + delta)) from 0.001 * N(0, 1), as the
  official code; CE(f(x), y) + lambda * KL(f(x) || f(x_adv)).
- ``"mart"`` (Stutz et al. 2021, supplement Eq. 14-15): PGD on cross-entropy from 0.001 * N(0, 1), as the official
  code; BCE(f(x_adv), y) + lambda * KL(f(x) || f(x_adv)) * (1 - f_y(x)).

Every attack runs in eval mode and returns its last iterate. Forward passes of the outer loss:
one for ``"at"`` (adversarial), two for ``"trades"`` and ``"mart"`` (clean first, then adversarial);
the ``"trades"`` attack adds one clean forward pass without gradients.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Literal, Mapping, Tuple

import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lit_robust.attacks import PGD, Norm
from lit_robust.errors import check, check_choice
from lit_robust.modules.base import AdversarialModule, step_output
from lit_robust.modules.losses import mart_loss, trades_loss

BaseLoss = Literal["at", "trades", "mart"]
SMALL_START_STD = 0.001
Forward = Callable[[Tensor], Tensor]
OuterLoss = Callable[[Forward, Tensor, Tensor, Tensor, float], Tuple[Tensor, Tensor]]


def adversarial_cross_entropy(forward: Forward, x: Tensor, x_adv: Tensor, y: Tensor,
                              lam: float) -> Tuple[Tensor, Tensor]:
    """AT's outer loss CE(f(x_adv), y) (``lam`` unused) and the adversarial logits: one forward pass."""
    adversarial_logits = forward(x_adv)
    return F.cross_entropy(adversarial_logits, y), adversarial_logits


def clean_and_adversarial(outer: Callable[[Tensor, Tensor, Tensor, float], Tensor]) -> OuterLoss:
    """The outer loss ``outer(f(x), f(x_adv), y, lam)`` and the adversarial logits: two forward passes,
    clean first, then adversarial."""

    def loss(forward: Forward, x: Tensor, x_adv: Tensor, y: Tensor, lam: float) -> Tuple[Tensor, Tensor]:
        clean_logits = forward(x)
        adversarial_logits = forward(x_adv)
        return outer(clean_logits, adversarial_logits, y, lam), adversarial_logits

    return loss


@dataclass(frozen=True)
class Objective:
    """A base objective: the options of its training PGD (besides the threat model, the number of
    iterations and the last iterate, which every training PGD shares) and its outer loss."""

    outer: OuterLoss
    attack: Mapping[str, Any] = field(default_factory=dict)


OBJECTIVES: Dict[str, Objective] = {
    "at": Objective(adversarial_cross_entropy),
    "trades": Objective(clean_and_adversarial(trades_loss), dict(loss="kl", init_std=SMALL_START_STD)),
    "mart": Objective(clean_and_adversarial(mart_loss), dict(init_std=SMALL_START_STD)),
}


def base_attack(base: BaseLoss, epsilon: float, step_size: float, steps: int, norm: Norm) -> PGD:
    """The training attack of ``base``: PGD-``steps``, last iterate, model in eval mode.

    Args:
        base: ``"at"``, ``"trades"`` or ``"mart"``.
        epsilon: radius of the threat model.
        step_size: PGD step size.
        steps: PGD iterations.
        norm: ``"linf"`` or ``"l2"``.
    """
    return PGD(epsilon, step_size, steps, norm=norm, keep_best=False, **OBJECTIVES[base].attack)


def base_loss(base: BaseLoss, forward: Forward, x: Tensor, x_adv: Tensor, y: Tensor,
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
    return OBJECTIVES[base].outer(forward, x, x_adv, y, lam)


class ObjectiveModule(AdversarialModule):
    """An :class:`~lit_robust.modules.base.AdversarialModule` trained on the base objective named
    :attr:`objective` (a key of :data:`OBJECTIVES`): its training attack and, by :meth:`robust_loss`,
    its outer loss with weight ``lam``. Subclasses name the objective (TRADES, MART) or take it as an
    argument (:class:`BaseLossModule`, UnlabeledAT); those that change the update (AWP, AMP, SAM)
    override :meth:`training_step`.

    Args:
        lam: weight lambda of the KL term of TRADES and MART (1, 3, 6 or 9 in Stutz et al. 2021; unused for AT).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    objective: str = "at"

    def __init__(self, *args: Any, lam: float = 6.0, **kwargs: Any) -> None:
        check(lam >= 0, "lam", lam, "a number >= 0 (the paper uses 1, 3, 6 or 9)")
        super().__init__(*args, **kwargs)

    def make_train_attack(self) -> PGD:
        """The training attack of :attr:`objective` (see :func:`base_attack`)."""
        return base_attack(self.objective, **self.train_attack_arguments())

    def robust_loss(self, forward: Forward, x: Tensor, x_adv: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        """The outer loss of :attr:`objective` for the network ``forward``, and its adversarial logits
        (see :func:`base_loss`)."""
        return base_loss(self.objective, forward, x, x_adv, y, self.hparams.lam)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        """The inner maximisation (the training attack of :attr:`objective`), then its outer loss."""
        x, y = self.inputs_and_targets(batch)
        # inner maximisation: max_delta of the objective's attack loss (CE, or KL(f(x) || f(x + delta)))
        x_adv = self.train_attack(self.model, x, y)
        # outer minimisation: the objective's loss on the clean and adversarial examples
        loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
        return step_output(loss, adversarial_logits, y)


class BaseLossModule(ObjectiveModule):
    """An :class:`ObjectiveModule` whose base objective is the argument ``base_loss``
    (:func:`base_attack` for the inner maximisation, :meth:`robust_loss` for the outer loss).

    Args:
        base_loss: ``"at"``, ``"trades"`` or ``"mart"``.
        lam: weight lambda of the KL term of ``"trades"`` and ``"mart"`` (1, 3, 6 or 9 in Stutz et al. 2021).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, base_loss: BaseLoss = "at", lam: float = 6.0, **kwargs: Any) -> None:
        check_choice(base_loss, "base_loss", ("at", "trades", "mart"))
        super().__init__(*args, lam=lam, **kwargs)

    @property
    def objective(self) -> str:
        """The base objective: ``base_loss``."""
        return self.hparams.base_loss
