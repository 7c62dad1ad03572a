"""AT-AWP, adversarial training with adversarial weight perturbations.

Wu et al. 2020; Stutz et al. 2021, supplement Eq. 12.
"""

from typing import Any, Dict

import torch
from torch import Tensor
from typing_extensions import override

from lit_robust.errors import check, check_choice
from lit_robust.modules.base import step_output
from lit_robust.modules.objectives import BaseLossModule
from lit_robust.modules.weight_perturbation import forward_at, mean_over_processes, running_stats_unchanged
from lit_robust.weights import Selection, names_and_weights, normalize_direction


class AWP(BaseLossModule):
    """min_w E[max_{nu in B_xi(w)} L(f(x_adv; w + nu), y)] with x_adv computed at w first (Eq. 12).

    After the adversarial examples, nu is one step of gradient ascent on the base loss of size xi,
    the gradient normalised per layer as in Eq. 2, nu_l = xi ||w_l|| g_l / ||g_l||; it lies on the
    boundary of B_xi(w) (Stutz et al. 2021, supplement Eq. 4). The gradient of the base loss at w + nu then updates w.
    The paper's best setting is xi = 0.01 with one ascent step, perturbing the weights of
    convolutional and linear layers (``which="weights"``, as the official code, which skips every
    tensor with fewer than two dimensions). The base loss (``base_loss``) can be AT's cross-entropy,
    TRADES' or MART's (TRADES-AWP, MART-AWP).

    ``warmup_epochs`` trains without weight perturbation (plain AT, TRADES or MART) for the first
    epochs, as the official code's ``--awp-warmup`` (0 in its AT-AWP script, 10 in its TRADES-AWP
    script, "after some epochs for accelerating"). The ascent direction is only meaningful once the
    network fits the adversarial examples somewhat: from random weights, a perturbation of relative
    size xi on the high-loss landscape of early training can keep the network from leaving chance
    (with the digits network SmallCNNFC, xi = 0.01 without warm-up fell to chance).

    Differences from the official code, which the paper's text does not have: the perturbation is never
    added to w in place, so nothing is subtracted after the step (see
    :mod:`~lit_robust.modules.weight_perturbation`); under data-parallel training the ascent gradient is
    averaged over processes. As with the official proxy network, the ascent pass leaves batch
    normalisation's running statistics unchanged. ``train/rloss`` and ``train/rerr`` are measured at w,
    without the weight perturbation, as the paper reports AWP's robust loss.

    Per training step with PGD-K and base loss ``"at"``: K + 2 forward passes (K attack iterations,
    one at w for the ascent, one at w + nu for the update), K input-only backward passes and two full
    backward passes (one for the ascent direction, which needs only weight gradients, one for the
    update); PGD-7: 9 forward, 7 input-only backward, 2 full backward. Base losses ``"trades"`` and
    ``"mart"`` double the update's and the ascent's forward passes (clean and adversarial), and
    ``"trades"`` adds the attack's clean pass.

    Args:
        xi: relative radius and step size, ||nu_l|| = xi ||w_l|| (0.01 in the paper).
        which: tensors to perturb, ``"weights"`` (conv / linear weights, the paper's AWP) or ``"all"``
            (also biases; never normalisation layers), see :func:`~lit_robust.weights.select_parameters`.
        warmup_epochs: epochs at the start without weight perturbation (0: perturb from the first step,
            the paper's text and the official AT-AWP; the official TRADES-AWP uses 10).
        **kwargs: :class:`~lit_robust.modules.objectives.BaseLossModule` arguments: ``base_loss``
            (``"at"``, ``"trades"`` or ``"mart"``), ``lam`` and those of
            :class:`~lit_robust.modules.base.AdversarialModule`.
    """

    def __init__(self, *args: Any, xi: float = 0.01, which: Selection = "weights", warmup_epochs: int = 0,
                 **kwargs: Any) -> None:
        check(xi > 0, "xi", xi, "a number > 0 (relative radius per layer, 0.01 in the paper)")
        check(isinstance(warmup_epochs, int) and warmup_epochs >= 0, "warmup_epochs", warmup_epochs,
              "an integer >= 0 (epochs without weight perturbation)")
        check_choice(which, "which", ("weights", "all"))
        super().__init__(*args, **kwargs)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        h = self.hparams
        # inner maximisation over the input, at w
        x_adv = self.train_attack(self.model, x, y)
        if self.current_epoch < h.warmup_epochs:  # warm-up: the base loss at w, no weight perturbation
            loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
            return step_output(loss, adversarial_logits, y)
        # inner maximisation over the weights (Eq. 12): one ascent step of size xi, normalised per layer
        names, weights = names_and_weights(self.model, h.which)
        with running_stats_unchanged(self.model):
            ascent_loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
            gradient = mean_over_processes(torch.autograd.grad(ascent_loss, weights))
        nu = normalize_direction(gradient, weights, per="layer", scale=h.xi)
        # outer minimisation: the gradient of the base loss at w + nu updates w
        loss, _ = self.robust_loss(forward_at(self.model, names, weights, nu), x, x_adv, y)
        return step_output(loss, adversarial_logits, y)
