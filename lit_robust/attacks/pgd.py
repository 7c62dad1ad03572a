"""Adversarial attacks on the input: PGD (L-inf and L2) with restarts, and FGSM with a random start.

An attack is configured without a model and called with one, ``attack(model, x, y) -> x_adv``.
The call is a template (Stutz et al. 2021, supplement Sec. D and F): the model is put in the batch-normalisation
mode the attack was told (eval by default, as in the paper's code), the perturbation is
optimised with input gradients only (``torch.autograd.grad`` with respect to the perturbation,
so the weights' ``.grad`` is never touched), and every submodule's train/eval mode is restored
afterwards. Images are in [0, 1] and every iterate is projected onto the epsilon-ball and onto
[0, 1]; an attack refuses inputs outside [0, 1] (normalisation belongs inside the model), which
it would otherwise clip silently.

With ``keep_best`` (the default) PGD keeps, per example, the iterate with the highest loss, over
the iterations of one run and over the restarts: the paper's "worst-case adversarial example per
test example". Adversarial training uses the last iterate of a single run (``keep_best=False``),
which saves the forward pass that would score the final iterate.
"""

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_robust.attacks.input_contract import check_input_range
from lit_robust.errors import check, check_choice
from lit_robust.inference_mode import require_gradients

Norm = Literal["linf", "l2"]
BNMode = Literal["eval", "train"]
Objective = Literal["ce", "kl"]


def per_example_loss(logits: Tensor, y: Tensor, objective: Objective = "ce",
                     clean_logits: Optional[Tensor] = None) -> Tensor:
    """The attack objective per example, in float32.

    Args:
        logits: model outputs on the (perturbed) inputs, shape (B, K).
        y: labels, shape (B,). Unused for ``"kl"``.
        objective: ``"ce"`` (cross-entropy) or ``"kl"``, TRADES' inner objective
            KL(f(x) || f(x_adv)) = sum_k p_k(x) (log p_k(x) - log p_k(x_adv)) (Stutz et al. 2021, supplement Eq. 13).
        clean_logits: model outputs on the clean inputs, needed for ``"kl"``.
    """
    if objective == "ce":
        return F.cross_entropy(logits.float(), y, reduction="none")
    log_p_clean = F.log_softmax(clean_logits.float(), dim=1)
    return (log_p_clean.exp() * (log_p_clean - F.log_softmax(logits.float(), dim=1))).sum(dim=1)


@torch.no_grad()
def per_example_losses(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of ``model`` on the batch ``(x, y)``, one value per example, without gradients."""
    return per_example_loss(model(x), y)


@dataclass
class AttackResult:
    """What an attack found: the adversarial inputs and, when scored, their loss and logits."""

    x_adv: Tensor
    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None

    def keep_worse(self, other: "AttackResult") -> "AttackResult":
        """Per example, the one of ``self`` and ``other`` with the higher loss."""
        take = other.loss > self.loss
        shape = (-1,) + (1,) * (self.x_adv.dim() - 1)
        return AttackResult(
            x_adv=torch.where(take.view(shape), other.x_adv, self.x_adv),
            loss=torch.where(take, other.loss, self.loss),
            logits=torch.where(take.view(-1, 1), other.logits, self.logits),
        )


class restore_modes:
    """Context manager: set ``model`` to train (True) or eval (False) mode, then restore every submodule's mode."""

    def __init__(self, model: nn.Module, training: bool) -> None:
        self.model = model
        self.training = training

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.train(self.training)
        return self.model

    def __exit__(self, *exc) -> None:
        for module, mode in self.modes:
            module.training = mode


def check_threat_model(epsilon: float, norm: Norm, setting: str = "epsilon") -> None:
    """Raise :class:`~lit_robust.errors.ConfigurationError` unless ``epsilon`` is a radius of the ``norm``
    threat model on [0, 1] images: in (0, 1] for L-inf (a larger ball holds every image), > 0 for L2."""
    if norm == "linf":
        check(isinstance(epsilon, (int, float)) and 0 < epsilon <= 1, setting, epsilon,
              "a number in (0, 1] for the L-inf threat model (pixel units of [0, 1] images, e.g. 8/255)")
    else:
        check(isinstance(epsilon, (int, float)) and 0 < epsilon < math.inf, setting, epsilon,
              "a finite number > 0 for the L2 threat model (e.g. 0.5)")


def check_step_size(step_size: float, epsilon: float, setting: str = "step_size") -> None:
    """Raise :class:`~lit_robust.errors.ConfigurationError` unless ``0 < step_size <= 2 * epsilon``: a longer
    step leaves the epsilon-ball from any point of it, so that the projection undoes it."""
    check(isinstance(step_size, (int, float)) and 0 < step_size <= 2 * epsilon, setting, step_size,
          f"a number in (0, 2 * epsilon] = (0, {2 * epsilon:.4g}] (a longer step only leaves the epsilon-ball; "
          f"e.g. epsilon / 4)")


PAPER_EPSILON = 8 / 255
"""Radius of the paper's L-inf threat model on CIFAR-10 (Stutz et al. 2021, supplement Sec. F), the default of every
setting."""
PAPER_STEP_SIZE = 0.007
"""The paper's PGD step size for ``PAPER_EPSILON`` (Stutz et al. 2021, supplement Sec. F)."""


@dataclass(frozen=True)
class ThreatModel:
    """The input threat model: perturbations in the ``norm`` ball of radius ``epsilon`` around [0, 1] images,
    searched by PGD with ``step_size`` (Stutz et al. 2021, supplement Sec. F). A module's ``threat_model`` is what its
    evaluation attacks, AutoAttack and the callbacks that attack (flatness, landscape, early stopping) use.

    Args:
        epsilon: radius of the ball (8/255 on CIFAR-10).
        step_size: PGD step size (0.007 in the paper).
        norm: ``"linf"`` or ``"l2"``.
    """

    epsilon: float = PAPER_EPSILON
    step_size: float = PAPER_STEP_SIZE
    norm: Norm = "linf"


def threat_model_of(module: nn.Module, user: str) -> ThreatModel:
    """The ``threat_model`` of ``module`` (every :class:`~lit_robust.modules.AdversarialModule` has one).

    Raises:
        ConfigurationError: naming ``user`` when the module has none.
    """
    threat_model = getattr(module, "threat_model", None)
    check(isinstance(threat_model, ThreatModel), "model", type(module).__name__,
          f"a module with a threat_model (a lit_robust.modules.AdversarialModule) for {user}")
    return threat_model


class PGD:
    """Projected gradient descent on the input (Madry et al. 2018; Stutz et al. 2021, supplement Sec. F).

    Args:
        epsilon: radius of the threat model's ball, in pixel units of [0, 1] images (8/255 on CIFAR-10).
        step_size: step per iteration (0.007 in the paper for epsilon 8/255).
        steps: number of iterations (7 for training, 20 for evaluation in the paper).
        restarts: number of random restarts; the worst case per example is kept.
        norm: ``"linf"`` (signed-gradient steps) or ``"l2"`` (steps along the L2-normalised gradient).
        random_start: start uniformly inside the ball (otherwise at the clean input).
        bn_mode: mode of the model while attacking, ``"eval"`` (paper) or ``"train"``.
        loss: objective to maximise, ``"ce"`` or ``"kl"`` (TRADES).
        keep_best: keep the highest-loss iterate per example; otherwise the last iterate of the last run.
        init_std: when > 0, start from Gaussian noise of this standard deviation instead of uniform
            in the ball (TRADES' official code starts from 0.001 * N(0, 1)).
    """

    def __init__(self, epsilon: float, step_size: float, steps: int, restarts: int = 1,
                 norm: Norm = "linf", random_start: bool = True, bn_mode: BNMode = "eval",
                 loss: Objective = "ce", keep_best: bool = True, init_std: float = 0.0) -> None:
        check_choice(norm, "norm", ("linf", "l2"))
        check_threat_model(epsilon, norm)
        check_step_size(step_size, epsilon)
        check(isinstance(steps, int) and steps >= 1, "steps", steps, "an integer >= 1")
        check(isinstance(restarts, int) and restarts >= 1, "restarts", restarts, "an integer >= 1")
        check_choice(bn_mode, "bn_mode", ("eval", "train"))
        check_choice(loss, "loss", ("ce", "kl"))
        check(init_std >= 0, "init_std", init_std, "a number >= 0")
        self.epsilon = float(epsilon)
        self.step_size = float(step_size)
        self.steps = steps
        self.restarts = restarts
        self.norm = norm
        self.random_start = random_start
        self.bn_mode = bn_mode
        self.loss = loss
        self.keep_best = keep_best
        self.init_std = init_std

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(epsilon={self.epsilon:.4g}, step_size={self.step_size:.4g}, "
                f"steps={self.steps}, restarts={self.restarts}, norm={self.norm!r}, loss={self.loss!r})")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial examples for ``(x, y)`` against ``model``."""
        return self.run(model, x, y, score=False).x_adv

    def run(self, model: nn.Module, x: Tensor, y: Tensor, score: bool = True) -> AttackResult:
        """Attack and return an :class:`AttackResult`.

        Args:
            model: the network, taking [0, 1] images and returning logits.
            x: clean inputs in [0, 1].
            y: labels (the attack's targets for ``"ce"``).
            score: also return the loss and logits of the returned examples (one more forward
                pass when they are not known already).

        Raises:
            ConfigurationError: when ``x`` is not in [0, 1] (the input contract,
                :mod:`lit_robust.attacks.input_contract`).
        """
        require_gradients("attacks")
        check_input_range(x)
        x = x.detach()
        with restore_modes(model, self.bn_mode == "train"), torch.enable_grad():
            clean_logits = None
            if self.loss == "kl":
                with torch.no_grad():
                    clean_logits = model(x)
            result = None
            for _ in range(self.restarts):
                run = self._run_once(model, x, y, clean_logits, score or self.keep_best or self.restarts > 1)
                result = run if result is None else result.keep_worse(run)
        return result

    def _run_once(self, model: nn.Module, x: Tensor, y: Tensor, clean_logits: Optional[Tensor],
                  score_last: bool) -> AttackResult:
        delta = self.initial_delta(x)
        best = None
        for _ in range(self.steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            losses = self.objective(logits, y, clean_logits)
            (grad,) = torch.autograd.grad(losses.sum(), delta)
            delta = delta.detach()
            if self.keep_best:
                best = self._keep(best, AttackResult(x + delta, losses.detach(), logits.detach()))
            delta = self.project(x, self.ascent(delta, grad))
        last = AttackResult(x + delta)
        if score_last:
            with torch.no_grad():
                last.logits = model(last.x_adv)
                last.loss = self.objective(last.logits, y, clean_logits)
        return self._keep(best, last) if self.keep_best else last

    def objective(self, logits: Tensor, y: Tensor, clean_logits: Optional[Tensor]) -> Tensor:
        """The per-example loss the attack maximises (``loss``); attacks with an extra term override it."""
        return per_example_loss(logits, y, self.loss, clean_logits)

    @staticmethod
    def _keep(best: Optional[AttackResult], new: AttackResult) -> AttackResult:
        return new if best is None else best.keep_worse(new)

    def initial_delta(self, x: Tensor) -> Tensor:
        """Starting perturbation: Gaussian (``init_std``), uniform in the ball, or zero; feasible."""
        if not self.random_start:
            return torch.zeros_like(x)
        if self.init_std > 0:
            delta = self.init_std * torch.randn_like(x)
        elif self.norm == "linf":
            delta = (2 * torch.rand_like(x) - 1) * self.epsilon
        else:
            direction = torch.randn_like(x)
            direction = direction / _norms(direction).clamp_min(1e-12)
            dims = x[0].numel()
            radius = self.epsilon * torch.rand(x.shape[0], device=x.device).pow(1.0 / dims)
            delta = direction * radius.view((-1,) + (1,) * (x.dim() - 1))
        return self.project(x, delta)

    def ascent(self, delta: Tensor, grad: Tensor) -> Tensor:
        """One ascent step: signed gradient for L-inf, L2-normalised gradient for L2."""
        if self.norm == "linf":
            return delta + self.step_size * grad.sign()
        return delta + self.step_size * grad / _norms(grad).clamp_min(1e-12)

    def project(self, x: Tensor, delta: Tensor) -> Tensor:
        """Project onto the epsilon-ball and so that ``x + delta`` lies in [0, 1]."""
        if self.norm == "linf":
            delta = delta.clamp(-self.epsilon, self.epsilon)
        else:
            delta = delta * (self.epsilon / _norms(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0) - x


class FGSM(PGD):
    """FGSM with a random start (Wong et al. 2020, "Fast is better than free").

    One signed-gradient step of size ``step_factor * epsilon`` (1.25 in the paper) from a uniform
    start in the L-inf ball, projected back onto the ball and [0, 1].

    Args:
        epsilon: radius of the L-inf ball.
        step_factor: step size relative to epsilon.
        bn_mode: mode of the model while attacking.
    """

    def __init__(self, epsilon: float, step_factor: float = 1.25, bn_mode: BNMode = "eval") -> None:
        check(step_factor > 0, "step_factor", step_factor, "a number > 0")
        super().__init__(epsilon=epsilon, step_size=step_factor * epsilon, steps=1, bn_mode=bn_mode,
                         keep_best=False)


class FriendlyPGD(PGD):
    """Early-stopped PGD-K-tau (Zhang et al. 2020, "Attacks which do not kill training make
    adversarial learning stronger", Algorithm 1; Stutz et al. 2021, supplement Sec. G, "PGD-tau").

    Per example, before each of the K steps the current iterate is classified: if it is
    misclassified and the example has no steps left after the flip, the example stops there;
    if it is misclassified with steps left, one of its tau steps is used up and it steps on;
    otherwise it steps on. So an example stops tau steps after its label flips, tau = 0 leaves an
    example misclassified at the start where it is (no adversarial example), and an example whose
    label never flips runs all K steps. The objective is cross-entropy. Stopped examples leave the
    batch: each iteration's forward and input-only backward pass covers the examples still running.

    The paper's Algorithm 1 starts at x (``random_start=False``, the default); the official code
    starts at x + 0.001 * N(0, 1) (``random_start=True, init_std=0.001``).

    Args:
        epsilon: radius of the threat model's ball.
        step_size: step per iteration.
        steps: the most iterations K.
        tau: steps taken after the label flips (0, 1, 2 or 3 in Stutz et al. 2021).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a random point of the ball instead of x.
        bn_mode: mode of the model while attacking (eval, as the official code).
        init_std: with ``random_start``, start from Gaussian noise of this standard deviation.
    """

    def __init__(self, epsilon: float, step_size: float, steps: int, tau: int = 0, norm: Norm = "linf",
                 random_start: bool = False, bn_mode: BNMode = "eval", init_std: float = 0.0) -> None:
        check(isinstance(tau, int) and tau >= 0, "tau", tau, "an integer >= 0 (0, 1, 2 or 3 in the paper)")
        super().__init__(epsilon, step_size, steps, norm=norm, random_start=random_start, bn_mode=bn_mode,
                         keep_best=False, init_std=init_std)
        self.tau = tau

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, tau={self.tau})"

    def _run_once(self, model: nn.Module, x: Tensor, y: Tensor, clean_logits: Optional[Tensor],
                  score_last: bool) -> AttackResult:
        delta = self.initial_delta(x)
        steps_left = torch.full((len(x),), self.tau, device=x.device)
        running = torch.arange(len(x), device=x.device)
        for _ in range(self.steps):
            d = delta[running].requires_grad_(True)
            logits = model(x[running] + d)
            flipped = logits.argmax(dim=1) != y[running]
            stops = flipped & (steps_left[running] == 0)
            steps_left[running] -= (flipped & ~stops).long()
            if stops.all():
                break
            losses = per_example_loss(logits, y[running])
            (grad,) = torch.autograd.grad(losses[~stops].sum(), d)
            running, d, grad = running[~stops], d.detach()[~stops], grad[~stops]
            delta[running] = self.project(x[running], self.ascent(d, grad))
        last = AttackResult(x + delta)
        if score_last:
            with torch.no_grad():
                last.logits = model(last.x_adv)
                last.loss = per_example_loss(last.logits, y)
        return last


def _norms(t: Tensor) -> Tensor:
    """Per-example L2 norms, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view((-1,) + (1,) * (t.dim() - 1))
