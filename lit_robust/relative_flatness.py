"""Relative flatness of the feature layer (Petzka et al., NeurIPS 2021, "Relative Flatness and Generalization", Def. 3).

For the feature layer, the last linear layer with weight matrix w (d x m: row w_s holds the
weights of output neuron s),

    kappa(w) = sum_{s, s'} <w_s, w_s'> Tr(H_{s,s'}(w)),

H_{s,s'} the m x m block of the Hessian of the mean loss with respect to rows w_s and w_s'. It is
invariant to rescaling the layers below against the feature layer. Writing M = w w^T,
kappa = sum_j sum_{s,s'} M_{s s'} H_{(s,j),(s',j)} = E[<V, H V>] for the probe V = w Xi with Xi an
m x m matrix of independent Rademacher entries (then E[V_{sj} V_{s'j'}] = M_{s s'} [j = j']), so
kappa is estimated like a Hessian trace by Hutchinson's estimator
(:mod:`lit_robust.hessian_trace`), one Hessian-vector product per probe.

In RLoss the Hessian is that of the loss at adversarial examples found by PGD at w and then held
fixed; in clean Loss that of the clean loss. Conventions of the authors' public code
(kampmichael/RelativeFlatnessAndGeneralization), followed here: the Hessian of the *mean* loss over
the examples; the bias of the feature layer is not part of w. Differences: their code computes the
exact Hessian blocks (this module estimates the sum); their comparison script first rescales the
feature layer by the standard deviation of its inputs and adds a weight-decay term 2 alpha
||w_s||^2, neither of which is done here.
"""

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from lit_robust.attacks import PAPER_EPSILON, PAPER_STEP_SIZE, PGD, Norm
from lit_robust.errors import check, check_choice
from lit_robust.flatness import FlatnessResult, LossKind, Reduce
from lit_robust.hessian_trace import rademacher, reduced_forms


def feature_layer(model: nn.Module) -> Tensor:
    """The weight matrix (d x m) of the last ``nn.Linear`` of ``model``, in module order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    check(len(linears) > 0, "model", type(model).__name__, "a network whose last layer is an nn.Linear")
    return linears[-1].weight


def relative_flatness(model: nn.Module, loader: Iterable, loss: LossKind = "rloss", samples: int = 100,
                      epsilon: float = PAPER_EPSILON, step_size: float = PAPER_STEP_SIZE, steps: int = 20,
                      restarts: int = 1,
                      norm: Norm = "linf", random_start: bool = True, max_examples: Optional[int] = 1000,
                      reduce: Optional[Reduce] = None,
                      generator: Optional[torch.Generator] = None) -> FlatnessResult:
    """kappa(w) of the last linear layer (Petzka et al. 2021, Def. 3), by Hutchinson's estimator.

    Args:
        model: the network; left exactly as it was.
        loader: batches ``(x, y)`` of [0, 1] images and labels.
        loss: ``"rloss"`` (at adversarial examples found at w) or ``"loss"``.
        samples: probe matrices V = w Xi (100).
        epsilon: radius of the input threat model.
        step_size: PGD step size.
        steps: PGD iterations of the adversarial examples (20).
        restarts: PGD restarts, worst case per example (1).
        norm: input threat model.
        random_start: PGD starts at a random point of the ball.
        max_examples: at most this many examples from the start of the loader (1000).
        reduce: sums a tensor over processes (for data-parallel evaluation).
        generator: random-number generator of the probes.

    Returns:
        ``flatness``: kappa (mean over the probes); ``std``: standard deviation of the single-probe
        estimates; ``perturbed`` kappa and ``reference`` 0.
    """
    check_choice(loss, "loss", ("rloss", "loss"))
    check(isinstance(samples, int) and samples >= 1, "samples", samples, "an integer >= 1")
    w = feature_layer(model)
    attack = PGD(epsilon, step_size, steps, restarts=restarts, norm=norm, random_start=random_start)

    def probe():
        (xi,) = rademacher([w.new_empty(w.shape[1], w.shape[1])], generator)
        return [w.detach() @ xi]

    forms, count = reduced_forms(model, loader, [w], probe, loss, attack, samples, max_examples, reduce)
    kappa = float(forms.mean())
    return FlatnessResult(flatness=kappa, std=float(forms.std(correction=0)), perturbed=kappa, reference=0.0,
                          examples=count)
