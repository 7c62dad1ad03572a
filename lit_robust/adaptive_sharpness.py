"""Adaptive sharpness, average and worst case, in RLoss and clean Loss.

Kwon et al., ICML 2021, "ASAM: Adaptive Sharpness-Aware Minimization" (Def. 1) and Andriushchenko et
al., ICML 2023, "A Modern Look at the Relationship between Sharpness and Generalization" (Eq. 1-2):
weight perturbations nu = |w| * u (elementwise) with ||u||_p <= rho, i.e. ||nu / |w| ||_p <= rho,

- average case: E_z[L(w + rho |w| * z)] - L(w), z ~ N(0, I) (not normalised, as the authors' code);
- worst case: max_{||u||_p <= rho} L(w + |w| * u) - L(w), p = 2 or p = inf, by projected gradient
  ascent on u with momentum and step-size halving (the authors' APGD-style ascent: 20 iterations,
  initial step 2 rho, momentum 0.75, the step halved at APGD's checkpoints when the loss stopped
  improving, the largest batch-mean loss over the iterates kept), per batch (128 examples there).

Because nu scales with |w|, both are invariant to rescaling a neuron's incoming weights by alpha and
its outgoing weights by 1/alpha; with ``adaptive=False`` (nu = u, the plain sharpness of Keskar et
al. / SAM) they are not. In RLoss, the loss at w + nu is RLoss by PGD (a fresh attack per weight
perturbation) in the average case, and the worst case ascends u and the input perturbation delta
jointly, one PGD step on delta per weight step, as worst-case flatness does
(:func:`~lit_robust.flatness.joint_ascent`); the reference RLoss(w) is PGD with restarts, worst case
per example, as in :mod:`lit_robust.flatness`.

Differences from the authors' public code (tml-epfl/sharpness-vs-generalization):

- the perturbed tensors are those of :func:`~lit_robust.weights.select_parameters` (every weight and
  bias, batch-normalisation parameters excluded); the code perturbs all parameters, BN's included;
- the worst case runs in the u-space: for p = 2 the step is the normalised gradient with respect to
  u (the gradient times |w|) and the projection is onto the ball ||u||_2 <= rho, where the code
  normalises by the norm of the weight gradient and projects delta onto the ellipsoid by bisection;
  for p = inf both agree (signed step, clamping to rho |w|);
- the ascent starts at a random point of the ball (on the sphere for p = 2, uniform for p = inf);
  the code's L2 start rho |w| z is not projected; one restart, as the code's default;
- the code's worst case starts its maximum at L(w), so it is never negative; here the maximum is over
  the iterates only (in RLoss the reference is a stronger attack than the ascent's single steps);
- the code uses "logit normalisation" as an option for its best-correlating variant; not done here.

Eval mode, the first ``max_examples`` examples, weights restored bit for bit, ``.grad`` untouched;
sums are reduced over processes in one collective.
"""

import math
from typing import Iterable, List, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from lit_robust.attacks import PAPER_EPSILON, PAPER_STEP_SIZE, PGD, Norm, per_example_loss, restore_modes
from lit_robust.errors import check, check_choice
from lit_robust.flatness import FlatnessResult, LossKind, Reduce, loss_of, losses_at
from lit_robust.hessian_trace import examples
from lit_robust.weights import Selection, gaussian_direction, names_and_weights, perturbed

P = Literal["2", "inf"]


def scales(weights: Sequence[Tensor], adaptive: bool) -> List[Tensor]:
    """|w| (adaptive) or ones (plain sharpness), per tensor: nu = scale * u."""
    return [w.detach().abs() if adaptive else torch.ones_like(w) for w in weights]


def project_ball(u: Sequence[Tensor], rho: float, p: str) -> List[Tensor]:
    """Euclidean projection onto {u : ||u||_p <= rho}, the norm over all tensors together."""
    if p == "inf":
        return [v.clamp(-rho, rho) for v in u]
    norm = torch.sqrt(sum((v * v).sum() for v in u))
    factor = (rho / norm.clamp_min(1e-12)).clamp(max=1.0)
    return [v * factor for v in u]


def apgd_checkpoints(iterations: int) -> List[int]:
    """The iterations at which APGD may halve its step (Croce and Hein 2020): p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), at ceil(p_j * iterations)."""
    p, points = [0.0, 0.22], [math.ceil(0.22 * iterations)]
    while points[-1] < iterations:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        points.append(math.ceil(p[-1] * iterations))
    return points


def _random_start(weights: Sequence[Tensor], rho: float, p: str, generator: Optional[torch.Generator]) -> List[Tensor]:
    if p == "inf":
        device = "cpu" if generator is None else generator.device
        return [((torch.rand(w.shape, generator=generator, device=device) * 2 - 1) * rho).to(w.device, w.dtype)
                for w in weights]
    direction = gaussian_direction(weights, generator)
    norm = torch.sqrt(sum((d * d).sum() for d in direction))
    return [d / norm * rho for d in direction]


def worst_case_ascent(model: nn.Module, weights: Sequence[Tensor], scale: Sequence[Tensor], x: Tensor, y: Tensor,
                      attack: Optional[PGD], rho: float, p: str, iterations: int,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """The largest batch-mean loss found at w + scale * u, ||u||_p <= rho, by the APGD-style ascent.

    Args:
        model: the network, in the mode to evaluate it in.
        weights: the perturbed tensors w.
        scale: |w| (adaptive) or ones, per tensor.
        x: inputs.
        y: labels.
        attack: gives delta's start, step and projection for RLoss; None for clean Loss.
        rho: radius of the ball of u.
        p: ``"2"`` or ``"inf"``.
        iterations: ascent iterations (20).
        generator: random-number generator of the starting u.
    """
    weights = list(weights)
    u = _random_start(weights, rho, p, generator)
    u_previous = u
    delta = attack.initial_delta(x) if attack is not None else None
    step = 2 * rho
    best, best_u = -math.inf, u
    checkpoints, improved, last_checkpoint = set(apgd_checkpoints(iterations)), 0, 0
    step_at_checkpoint, best_at_checkpoint = step, best
    for i in range(iterations + 1):
        nu = [s * v for s, v in zip(scale, u)]
        if i == iterations:  # the last iterate is only evaluated
            with perturbed(weights, nu), torch.no_grad():
                best = max(best, float(per_example_loss(model(x if delta is None else x + delta), y).mean()))
            break
        with perturbed(weights, nu):
            inputs = x if delta is None else x + delta.requires_grad_(True)
            losses = per_example_loss(model(inputs), y)
            grads = torch.autograd.grad(losses.sum(), weights + ([] if delta is None else [delta]))
        mean = float(losses.detach().mean())
        if mean > best:
            best, best_u, improved = mean, u, improved + 1
        # the gradient with respect to u is the weight gradient times the scale
        g = [gw * s for gw, s in zip(grads[:len(weights)], scale)]
        if p == "inf":
            stepped = [v + step * gv.sign() for v, gv in zip(u, g)]
        else:
            g_norm = torch.sqrt(sum((gv * gv).sum() for gv in g)).clamp_min(1e-12)
            stepped = [v + step * gv / g_norm for v, gv in zip(u, g)]
        u, u_previous = [0.75 * a + 0.25 * b for a, b in zip(project_ball(stepped, rho, p), u_previous)], u
        if delta is not None:
            delta = attack.project(x, attack.ascent(delta.detach(), grads[-1]))
        if i + 1 in checkpoints:
            stalled = improved < 0.75 * (i + 1 - last_checkpoint)
            unchanged = step == step_at_checkpoint and best == best_at_checkpoint
            step_at_checkpoint, best_at_checkpoint, last_checkpoint, improved = step, best, i + 1, 0
            if stalled or unchanged:
                step, u, u_previous = step / 2, best_u, best_u
    return torch.tensor(best, dtype=torch.float64)


def adaptive_sharpness(model: nn.Module, loader: Iterable, case: Literal["average", "worst"] = "average",
                       loss: LossKind = "rloss", rho: Optional[float] = None, p: P = "2", adaptive: bool = True,
                       samples: int = 10, iterations: int = 20, epsilon: float = PAPER_EPSILON,
                       step_size: float = PAPER_STEP_SIZE, steps: int = 20, reference_steps: int = 20,
                       reference_restarts: int = 10,
                       norm: Norm = "linf", random_start: bool = True, max_examples: Optional[int] = 1000,
                       parallel: int = 10, which: Selection = "all", reduce: Optional[Reduce] = None,
                       generator: Optional[torch.Generator] = None) -> FlatnessResult:
    """Average- or worst-case (adaptive) sharpness in RLoss or clean Loss (Andriushchenko et al. 2023, Eq. 1-2).

    Args:
        model: the network; left exactly as it was.
        loader: batches ``(x, y)`` of [0, 1] images and labels.
        case: ``"average"`` (Gaussian z) or ``"worst"`` (ascent in the ball).
        loss: ``"rloss"`` or ``"loss"``.
        rho: radius; None takes the default of the case and p: 0.1 (average), 0.5 (worst, p = 2),
            0.002 (worst, p = inf), from the middle of the authors' adaptive ranges for CIFAR-10 ResNets.
        p: ``"2"`` or ``"inf"``, the norm of the worst case (the average case is Gaussian).
        adaptive: nu = |w| * u (adaptive) or nu = u (plain sharpness).
        samples: Gaussian samples per batch of the average case (10).
        iterations: ascent iterations of the worst case (20).
        epsilon: radius of the input threat model.
        step_size: PGD step size, also delta's step in the worst-case ascent.
        steps: PGD iterations of RLoss at each perturbed network in the average case (20).
        reference_steps: PGD iterations of the reference RLoss(w) (20).
        reference_restarts: PGD restarts of the reference (10).
        norm: input threat model.
        random_start: PGD and delta start at a random point of the input ball.
        max_examples: at most this many examples from the start of the loader (1000).
        parallel: perturbations per ``vmap``-ed pass in the average case; the worst case is sequential.
        which: the perturbed tensors (see :func:`~lit_robust.weights.select_parameters`).
        reduce: sums a tensor over processes (for data-parallel evaluation).
        generator: random-number generator of z and of the ascent's start.

    Returns:
        ``flatness``: the sharpness; ``perturbed`` the first term, ``reference`` L(w); ``std`` over the
        samples (average case; 0 for the worst case).
    """
    check_choice(case, "case", ("average", "worst"))
    check_choice(loss, "loss", ("rloss", "loss"))
    check_choice(p, "p", ("2", "inf"))
    if rho is None:
        rho = 0.1 if case == "average" else (0.5 if p == "2" else 0.002)
    check(rho > 0, "rho", rho, "a number > 0")
    for name, value in (("samples", samples), ("iterations", iterations), ("parallel", parallel)):
        check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("sharpness needs gradients but was called under torch.inference_mode(); run the "
                           "Trainer with inference_mode=False (train.py does) or call it outside inference mode.")
    names, weights = names_and_weights(model, which)
    scale = scales(weights, adaptive)
    reference_attack = PGD(epsilon, step_size, reference_steps, restarts=reference_restarts, norm=norm,
                           random_start=random_start) if loss == "rloss" else None
    attack = PGD(epsilon, step_size, steps, norm=norm, random_start=random_start) if loss == "rloss" else None
    sums = 1 if case == "worst" else samples
    totals = torch.zeros(2 + sums, dtype=torch.float64, device=weights[0].device)
    with restore_modes(model, False), torch.enable_grad():
        for x, y in examples(model, loader, None, max_examples):
            totals[0] += len(y)
            totals[1] += loss_of(model, x, y, reference_attack).sum().double()
            if case == "average":
                nus = [[s * rho * z for s, z in zip(scale, gaussian_direction(weights, generator))]
                       for _ in range(samples)]
                totals[2:] += losses_at(model, names, weights, nus, x, y, attack, parallel).sum(dim=1).double()
            else:
                totals[2] += len(y) * worst_case_ascent(model, weights, scale, x, y, attack, rho, p, iterations,
                                                        generator).to(totals.device)
    if reduce is not None:
        totals = reduce(totals)
    count = float(totals[0])
    if count == 0:
        raise ValueError("sharpness was asked for on a loader without examples")
    reference, per_sample = float(totals[1]) / count, totals[2:] / count
    first = float(per_sample.mean())
    return FlatnessResult(flatness=first - reference, std=float(per_sample.std(correction=0)), perturbed=first,
                          reference=reference, examples=int(count))
