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
its outgoing weights by 1/alpha; plain sharpness (nu = u, of Keskar et al. / SAM; :class:`Sharpness`
with ``adaptive=False``, named ``plain_...``) is not. In RLoss, the loss at w + nu is RLoss by PGD (a
fresh attack per weight perturbation) in the average case, and the worst case ascends u and the input perturbation delta
jointly, one PGD step on delta per weight step, as worst-case flatness does
(:func:`~lit_robust.measures.flatness.joint_ascent`); the reference RLoss(w) is PGD with restarts, worst case
per example, as in :mod:`lit_robust.measures.flatness`.

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
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from lit_robust.attacks import PGD, Norm, per_example_loss
from lit_robust.errors import check, check_choice
from lit_robust.measures.base import Examples, LossKind, Measure, MeasureResult, Reduce, reduced
from lit_robust.measures.flatness import loss_of, losses_at
from lit_robust.measures.registry import register_measure
from lit_robust.measures.settings import FlatnessSettings
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


@register_measure("adaptive_worst_loss_linf", case="worst", loss="loss", p="inf")
@register_measure("adaptive_worst_loss_l2", case="worst", loss="loss", p="2")
@register_measure("adaptive_worst_rloss_linf", case="worst", loss="rloss", p="inf")
@register_measure("adaptive_worst_rloss_l2", case="worst", loss="rloss", p="2")
@register_measure("adaptive_avg_loss", case="average", loss="loss")
@register_measure("adaptive_avg_rloss", case="average", loss="rloss")
class Sharpness(Measure):
    """Average- or worst-case sharpness, adaptive (nu = |w| * u) or plain (nu = u), in RLoss or clean Loss.

    Its name says which: ``adaptive_avg_rloss``, ``adaptive_worst_rloss_l2``, ``adaptive_worst_loss_linf``, ...
    and ``plain_avg_rloss``, ``plain_worst_loss_l2``, ... for plain sharpness (Andriushchenko et al. 2023,
    Eq. 1-2; Kwon et al. 2021, Def. 1).

    Args:
        case: ``"average"`` (Gaussian z) or ``"worst"`` (ascent in the ball).
        loss: ``"rloss"`` or ``"loss"``.
        rho: radius; None takes the default of the case and p: 0.1 (average), 0.5 (worst, p = 2),
            0.002 (worst, p = inf), from the middle of the authors' adaptive ranges for CIFAR-10 ResNets.
        p: ``"2"`` or ``"inf"``, the norm of the worst case (the average case is Gaussian).
        adaptive: nu = |w| * u (adaptive sharpness) or nu = u (plain sharpness).
        samples: Gaussian samples per batch of the average case (10).
        iterations: ascent iterations of the worst case (20).
        steps: PGD iterations of RLoss at each perturbed network in the average case (20).
        reference_steps: PGD iterations of the reference RLoss(w) (20).
        reference_restarts: PGD restarts of the reference (10).
        parallel: perturbations per ``vmap``-ed pass in the average case; the worst case is sequential.
        epsilon: radius of the input threat model (see :class:`~lit_robust.measures.base.Measure`).
        step_size: PGD step size, also delta's step in the worst-case ascent.
        norm: input threat model.
        random_start: PGD and delta start at a random point of the input ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: the perturbed tensors (see :func:`~lit_robust.weights.select_parameters`).
    """

    def __init__(self, *, case: Literal["average", "worst"] = "average", loss: LossKind = "rloss",
                 rho: Optional[float] = None, p: P = "2", adaptive: bool = True, samples: int = 10,
                 iterations: int = 20, steps: int = 20, reference_steps: int = 20, reference_restarts: int = 10,
                 parallel: int = 10, epsilon: Optional[float] = None, step_size: Optional[float] = None,
                 norm: Optional[Norm] = None, random_start: bool = True, max_examples: Optional[int] = 1000,
                 which: Selection = "all") -> None:
        super().__init__(epsilon=epsilon, step_size=step_size, norm=norm, random_start=random_start,
                         max_examples=max_examples, which=which)
        check_choice(case, "case", ("average", "worst"))
        check_choice(loss, "loss", ("rloss", "loss"))
        check_choice(p, "p", ("2", "inf"))
        if rho is None:
            rho = 0.1 if case == "average" else (0.5 if p == "2" else 0.002)
        check(rho > 0, "rho", rho, "a number > 0")
        for name, value in (("samples", samples), ("iterations", iterations), ("parallel", parallel)):
            check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        self.case, self.loss, self.rho, self.p, self.adaptive = case, loss, rho, p, adaptive
        self.samples, self.iterations, self.steps = samples, iterations, steps
        self.reference_steps, self.reference_restarts, self.parallel = reference_steps, reference_restarts, parallel

    @property
    def name(self) -> str:
        kind = "adaptive" if self.adaptive else "plain"
        if self.case == "average":
            return f"{kind}_avg_{self.loss}"
        return f"{kind}_worst_{self.loss}_{'linf' if self.p == 'inf' else 'l2'}"

    @classmethod
    def from_settings(cls, settings: FlatnessSettings, options: Dict[str, Any], **fixed: Any) -> "Sharpness":
        rho = options["adaptive_rho"] if fixed["case"] == "average" else (
            options["adaptive_rho_linf"] if fixed.get("p") == "inf" else options["adaptive_rho_l2"])
        samples = settings.samples if settings.adaptive_samples is None else settings.adaptive_samples
        return cls(rho=rho, samples=samples, iterations=settings.ascent_iterations, steps=settings.pgd_steps,
                   reference_steps=settings.pgd_steps, reference_restarts=settings.pgd_restarts,
                   parallel=options["parallel"], max_examples=None, **fixed)

    def measure(self, model: nn.Module, batches: Examples, reduce: Optional[Reduce],
                generator: Optional[torch.Generator]) -> MeasureResult:
        names, weights = names_and_weights(model, self.which)
        scale = scales(weights, self.adaptive)
        reference_attack = self.attack(self.reference_steps, self.reference_restarts) if self.robust else None
        attack = self.attack(self.steps) if self.robust else None
        sums = 1 if self.case == "worst" else self.samples
        totals = torch.zeros(2 + sums, dtype=torch.float64, device=weights[0].device)
        for x, y in batches:
            totals[0] += len(y)
            totals[1] += loss_of(model, x, y, reference_attack).sum().double()
            if self.case == "average":
                nus = [[s * self.rho * z for s, z in zip(scale, gaussian_direction(weights, generator))]
                       for _ in range(self.samples)]
                totals[2:] += losses_at(model, names, weights, nus, x, y, attack, self.parallel).sum(dim=1).double()
            else:
                totals[2] += len(y) * worst_case_ascent(model, weights, scale, x, y, attack, self.rho, self.p,
                                                        self.iterations, generator).to(totals.device)
        totals = reduced(totals, reduce, "sharpness")
        count = float(totals[0])
        reference, per_sample = float(totals[1]) / count, totals[2:] / count
        first = float(per_sample.mean())
        return MeasureResult(flatness=first - reference, std=float(per_sample.std(correction=0)), perturbed=first,
                             reference=reference, examples=int(count))


def sharpness(model: nn.Module, loader: Iterable, case: Literal["average", "worst"] = "average",
              reduce: Optional[Reduce] = None, generator: Optional[torch.Generator] = None,
              **settings: Any) -> MeasureResult:
    """:class:`Sharpness` with ``settings`` (its keyword arguments; the threat model by default the paper's),
    called once on ``model`` and ``loader``.

    Args:
        model: the network; left exactly as it was.
        loader: batches ``(x, y, ...)`` of [0, 1] images and labels; the first ``max_examples`` are used.
        case: ``"average"`` (Gaussian z) or ``"worst"`` (ascent in the ball).
        reduce: sums a tensor over processes (for data-parallel evaluation).
        generator: random-number generator of the measure's weight perturbations or probes.
        **settings: the keyword arguments of :class:`Sharpness`.
    """
    return Sharpness(case=case, **settings)(model, loader, reduce, generator)


def adaptive_sharpness(model: nn.Module, loader: Iterable, case: Literal["average", "worst"] = "average",
                       reduce: Optional[Reduce] = None, generator: Optional[torch.Generator] = None,
                       **settings: Any) -> MeasureResult:
    """Adaptive sharpness (Andriushchenko et al. 2023, Eq. 1-2), nu = |w| * u: :func:`sharpness` with
    ``adaptive=True``.

    Args:
        model: the network; left exactly as it was.
        loader: batches ``(x, y, ...)`` of [0, 1] images and labels; the first ``max_examples`` are used.
        case: ``"average"`` (Gaussian z) or ``"worst"`` (ascent in the ball).
        reduce: sums a tensor over processes (for data-parallel evaluation).
        generator: random-number generator of z and of the ascent's start.
        **settings: the keyword arguments of :class:`Sharpness` but ``adaptive``.
    """
    return Sharpness(case=case, adaptive=True, **settings)(model, loader, reduce, generator)
