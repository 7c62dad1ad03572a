"""AT-AMP, adversarial training with adversarial model perturbation (Yan et al. 2022, Algorithm 1, Eq. 9)."""

from typing import Any, Dict, List, Sequence

import torch
from torch import Tensor
from typing_extensions import override

from lit_robust.errors import check
from lit_robust.modules.base import step_output
from lit_robust.modules.objectives import BaseLossModule
from lit_robust.modules.weight_perturbation import forward_at, mean_over_processes, running_stats_unchanged
from lit_robust.weights import perturbed, trainable_parameters


class AMP(BaseLossModule):
    """min_theta max_{||Delta||_2 <= delta} (1/|B|) sum_B max_{||x' - x|| <= epsilon} L(f(x'); theta + Delta) (Eq. 9).

    Yan et al. 2022, Algorithm 1: Delta starts at 0; each of N inner iterations regenerates the
    adversarial examples at theta + Delta (lines 6-9), takes the gradient b of the base loss on them
    at theta + Delta (line 10), steps Delta <- Delta + xi * b and projects Delta onto the L2 ball of
    radius delta over all parameters together (lines 11-14). The gradient at theta + Delta on the
    last adversarial examples then updates theta (lines 16-17). Delta is a per-batch perturbation of
    every trainable parameter (theta); delta = 0.1 is the paper's best for AT. The base loss
    (``base_loss``) can be AT's cross-entropy, TRADES' or MART's (Yan et al. 2022, Table 3).

    Differences from the official AMP code (an optimiser), which the paper's text does not have:
    the official code projects each parameter tensor onto its own ball of radius delta, where the
    paper projects Delta as a whole, and it recomputes the loss after the last inner iteration,
    which in adversarial training would regenerate the adversarial examples once more. Here, as in
    :class:`~lit_robust.modules.awp.AWP`, the inner ascent passes leave batch normalisation's
    running statistics unchanged, the update's forward pass reads theta + Delta without changing
    theta in place, and under data-parallel training b is averaged over processes. Its defaults
    xi = 1 and N = 1 are the official code's (the paper states neither). ``train/rloss`` and
    ``train/rerr`` are measured in the first inner iteration, at theta.

    Per training step with PGD-K and base loss ``"at"``: N (K + 1) + 1 forward passes, N K input-only
    backward passes, N + 1 full backward passes (N = 1, PGD-7: 9 forward, 7 input-only backward,
    2 full backward). Base losses ``"trades"`` and ``"mart"`` double the loss's forward passes (clean and
    adversarial), and ``"trades"`` adds one clean pass per attack.

    Args:
        delta: radius of the L2 ball of Delta (0.1 in the paper for AT).
        xi: inner step size of the ascent on Delta.
        inner_iterations: N, inner iterations per batch.
        **kwargs: :class:`~lit_robust.modules.objectives.BaseLossModule` arguments: ``base_loss``
            (``"at"``, ``"trades"`` or ``"mart"``), ``lam`` and those of
            :class:`~lit_robust.modules.base.AdversarialModule`.
    """

    def __init__(self, *args: Any, delta: float = 0.1, xi: float = 1.0, inner_iterations: int = 1,
                 **kwargs: Any) -> None:
        check(delta > 0, "delta", delta, "a number > 0 (L2 radius of the weight perturbation, 0.1 in the paper)")
        check(xi > 0, "xi", xi, "a number > 0")
        check(isinstance(inner_iterations, int) and inner_iterations >= 1, "inner_iterations", inner_iterations,
              "an integer >= 1")
        super().__init__(*args, **kwargs)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        h = self.hparams
        names, theta = trainable_parameters(self.model)
        delta = [torch.zeros_like(p) for p in theta]
        for iteration in range(h.inner_iterations):
            with perturbed(theta, delta):
                # inner maximisation over the input, at theta + Delta
                x_adv = self.train_attack(self.model, x, y)
                # inner maximisation over the weights: Delta <- Proj(Delta + xi * b), b the gradient at theta + Delta
                with running_stats_unchanged(self.model):
                    ascent_loss, adversarial_logits = self.robust_loss(self.model, x, x_adv, y)
                    b = mean_over_processes(torch.autograd.grad(ascent_loss, theta))
            delta = project_onto_ball([d + h.xi * g for d, g in zip(delta, b)], h.delta)
            if iteration == 0:
                logits_at_theta = adversarial_logits
        # outer minimisation: the gradient at theta + Delta updates theta
        loss, _ = self.robust_loss(forward_at(self.model, names, theta, delta), x, x_adv, y)
        return step_output(loss, logits_at_theta, y)


def project_onto_ball(delta: Sequence[Tensor], radius: float) -> List[Tensor]:
    """Scale ``delta`` (all tensors as one vector) onto the L2 ball of ``radius`` if it lies outside
    (Yan et al. 2022, Algorithm 1, lines 12-14).

    Args:
        delta: one tensor per parameter.
        radius: delta, the radius of the ball.
    """
    norm = torch.sqrt(sum(d.detach().float().pow(2).sum() for d in delta))
    scale = (radius / norm.clamp_min(1e-12)).clamp(max=1.0)
    return [d * scale.to(d.dtype) for d in delta]
