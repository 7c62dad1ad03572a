"""Sharpness-aware minimisation (SAM) and adaptive SAM (ASAM) as the outer minimiser of adversarial training."""

from typing import Any, Dict, List, Literal, Optional, Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lit_robust.errors import check, check_choice
from lit_robust.modules.base import step_output
from lit_robust.modules.objectives import BaseLossModule
from lit_robust.modules.weight_perturbation import forward_at, mean_over_processes, running_stats_unchanged
from lit_robust.weights import names_and_weights, trainable_parameters

SAMSelection = Literal["trainable", "all", "weights"]
PAPER_RHO = {False: 0.05, True: 0.5}


class SAM(BaseLossModule):
    """PGD-AT whose weight update is SAM's (Foret et al., ICLR 2021) or ASAM's (Kwon et al., ICML 2021):

        min_w max_{||T_w^-1 epsilon||_2 <= rho} L(f(x_adv; w + epsilon), y),  x_adv found at w first.

    After the adversarial examples, epsilon is the first-order solution of the inner maximisation,
    from the gradient g of the robust loss at w (SAM Eq. 2; ASAM Algorithm 1):

        SAM  (``adaptive=False``, T_w = I):   epsilon = rho g / ||g||_2
        ASAM (``adaptive=True``):             epsilon = rho T_w^2 g / ||T_w g||_2,  T_w = |w| + eta elementwise,

    the norms taken over all perturbed tensors together. The gradient of the robust loss at
    w + epsilon then updates w (SAM Eq. 3, dropping the second-order term as the paper does). ASAM's
    T_w makes the neighbourhood, and so the sharpness it minimises, invariant to rescaling the
    weights of a ReLU network neuron by neuron (exactly for eta = 0 and no biases); the official ASAM code applies
    |w| + eta to every tensor whose name ends in ``weight`` (convolutional, linear and normalisation
    weights) and T_w = 1 to biases, and so does this module. Defaults are the papers' CIFAR-10 values
    and the official code's (SamsungLabs/ASAM): rho = 0.05 for SAM, rho = 0.5 and eta = 0.01 for
    ASAM; both official codes perturb every trainable tensor, batch normalisation's included
    (``which="trainable"``).

    AWP (:class:`~lit_robust.modules.awp.AWP`, Stutz et al. 2021, supplement Eq. 12) is the same two-pass update with
    a different neighbourhood: per layer, relative to ||w_l||, on the weights of convolutional and
    linear layers only. Wei, Zhu and Zhang ("Sharpness-aware minimization alone can improve
    adversarial robustness", ICML 2023 AdvML-Frontiers workshop; extended as Zhang et al., "On the
    duality between sharpness-aware minimization and adversarial training", ICML 2024) show that
    SAM on clean examples alone already improves robustness and relate SAM's weight perturbation to
    AT's input perturbation; here SAM acts on the adversarial loss, as AWP does.

    Differences from the official codes, which change nothing in the update: the perturbation is
    never added to w in place (the update's forward pass reads w + epsilon, see
    :mod:`~lit_robust.modules.weight_perturbation`), so nothing is subtracted afterwards and w is
    bit for bit unchanged; the ascent pass leaves batch normalisation's running statistics
    unchanged, where the official codes let both passes update them; under data-parallel training
    g is averaged over processes, so every process takes the same epsilon; the norm's guard is a
    clamp at 1e-12 instead of adding 1e-16. ``train/rloss`` and ``train/rerr`` are measured at w.

    Per training step with PGD-K and base loss ``"at"``: K + 2 forward passes (K attack iterations,
    one at w for g, one at w + epsilon for the update), K input-only backward passes and two full
    backward passes (PGD-7: 9 forward, 7 input-only backward, 2 full backward), as AWP. Base losses
    ``"trades"`` and ``"mart"`` double the two loss passes, and ``"trades"`` adds the attack's clean pass.

    Args:
        adaptive: ASAM (True) or SAM (False).
        rho: radius of the neighbourhood; ``None``: the papers' CIFAR-10 value, 0.05 for SAM, 0.5 for ASAM.
        eta: ASAM's eta, added to |w| in T_w (0.01 in the official code); unused by SAM.
        which: tensors to perturb: ``"trainable"`` (every trainable tensor, the official codes),
            ``"all"`` (weights and biases, no normalisation layers) or ``"weights"`` (conv / linear
            weights, as AWP), see :func:`~lit_robust.weights.select_parameters`.
        **kwargs: :class:`~lit_robust.modules.objectives.BaseLossModule` arguments: ``base_loss``
            (``"at"``, ``"trades"`` or ``"mart"``), ``lam`` and those of
            :class:`~lit_robust.modules.base.AdversarialModule`.
    """

    def __init__(self, *args: Any, adaptive: bool = False, rho: Optional[float] = None, eta: float = 0.01,
                 which: SAMSelection = "trainable", **kwargs: Any) -> None:
        check(isinstance(adaptive, bool), "adaptive", adaptive, "true (ASAM) or false (SAM)")
        check(rho is None or rho > 0, "rho", rho, "a number > 0 or null (0.05 for SAM, 0.5 for ASAM)")
        check(eta >= 0, "eta", eta, "a number >= 0 (0.01 in the official ASAM code)")
        check_choice(which, "which", ("trainable", "all", "weights"))
        super().__init__(*args, **kwargs)

    @property
    def rho(self) -> float:
        """The radius: ``rho`` where given, else the paper's (0.05 SAM, 0.5 ASAM)."""
        return self.hparams.rho if self.hparams.rho is not None else PAPER_RHO[self.hparams.adaptive]

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        h = self.hparams
        # inner maximisation over the input, at w
        x_adv = self.train_attack(self.model, x, y)
        # inner maximisation over the weights: epsilon from the gradient of the robust loss at w
        if h.which == "trainable":
            names, weights = trainable_parameters(self.model)
        else:
            names, weights = names_and_weights(self.model, h.which)
        with running_stats_unchanged(self.model):
            ascent_loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
            gradient = mean_over_processes(torch.autograd.grad(ascent_loss, weights))
        epsilon = sharpness_perturbation(gradient, weights, self.rho,
                                         scaled=[h.adaptive and name.endswith("weight") for name in names], eta=h.eta)
        # outer minimisation: the gradient of the robust loss at w + epsilon updates w
        loss, _ = self.robust_loss(forward_at(self.model, names, weights, epsilon), x, x_adv, y)
        return step_output(loss, adversarial_logits, y)


def sharpness_perturbation(gradient: Sequence[Tensor], weights: Sequence[Tensor], rho: float,
                           scaled: Sequence[bool], eta: float = 0.01) -> List[Tensor]:
    """epsilon = rho T^2 g / ||T g||_2 over all tensors together (ASAM Algorithm 1; SAM Eq. 2 where T = I).

    Args:
        gradient: g, one tensor per perturbed tensor.
        weights: w, in the same order.
        rho: radius of the neighbourhood.
        scaled: per tensor, whether T = |w| + eta elementwise (ASAM's weights) or T = 1.
        eta: ASAM's eta.
    """
    t = [w.detach().abs() + eta if s else None for w, s in zip(weights, scaled)]
    t_g = [g if ti is None else ti * g for g, ti in zip(gradient, t)]
    norm = torch.sqrt(sum(v.detach().float().pow(2).sum() for v in t_g)).clamp_min(1e-12)
    return [(v if ti is None else ti * v) * (rho / norm).to(v.dtype) for v, ti in zip(t_g, t)]
