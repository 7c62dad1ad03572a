"""Trace of the Hessian of the (robust) loss in weight space by Hutchinson's estimator.

    Tr(H) = E_v[v^T H v],  v with independent Rademacher entries (Hutchinson 1990),

H the Hessian of the mean cross-entropy over the first ``max_examples`` examples with respect to the
tensors of :func:`~lit_robust.weights.select_parameters` (batch normalisation excluded), each
v^T H v by one Hessian-vector product (double backpropagation). In RLoss the examples are fixed
adversarial examples, found by PGD at w before differentiating (the Hessian of L(f(x_adv; w), y) at
fixed x_adv, as the measures of :mod:`lit_robust.landscape` treat it); in clean Loss the clean ones.
It sits beside lambda_max (:func:`~lit_robust.landscape.hessian_max_eigenvalue`) and, like it, is not
invariant to rescaling the weights (Stutz et al. 2021, supplement Sec. E).

The same probe vectors serve every batch, so the estimate is v^T H v of the Hessian of the loss over
all examples; the per-probe sums are reduced over processes in one collective, like
:class:`~lit_robust.flatness.FlatnessMeasures`. Eval mode, weights and ``.grad`` untouched.
"""

from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lit_robust.attacks import PAPER_EPSILON, PAPER_STEP_SIZE, PGD, Norm, per_example_loss, restore_modes
from lit_robust.errors import check, check_choice
from lit_robust.flatness import FlatnessResult, LossKind, Reduce
from lit_robust.weights import Selection, names_and_weights


def rademacher(tensors: Sequence[Tensor], generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """A tensor of independent +-1 entries shaped like each of ``tensors`` (on their devices)."""
    device = "cpu" if generator is None else generator.device
    return [(torch.randint(0, 2, t.shape, generator=generator, device=device) * 2 - 1).to(t.device, t.dtype)
            for t in tensors]


def examples(model: nn.Module, loader: Iterable, attack: Optional[PGD],
             max_examples: Optional[int]) -> Iterator[Tuple[Tensor, Tensor]]:
    """The first ``max_examples`` examples of ``loader`` as batches ``(x, y)``, adversarial under ``attack``
    at the current weights (fixed from then on), or clean when ``attack`` is None."""
    device = next(model.parameters()).device
    seen = 0
    for x, y in loader:
        if max_examples is not None:
            x, y = x[:max_examples - seen], y[:max_examples - seen]
        if len(y) == 0:
            return
        seen += len(y)
        x, y = x.to(device), y.to(device)
        yield (x if attack is None else attack(model, x, y).detach()), y


def quadratic_forms(model: nn.Module, x: Tensor, y: Tensor, tensors: Sequence[Tensor],
                    probes: Sequence[Sequence[Tensor]]) -> Tensor:
    """v_k^T H v_k for every probe v_k, H the Hessian of the summed loss over the batch with respect to
    ``tensors``, shape (K,); one Hessian-vector product per probe."""
    loss = per_example_loss(model(x), y).sum()
    grads = torch.autograd.grad(loss, list(tensors), create_graph=True)
    forms = []
    for probe in probes:
        product = torch.autograd.grad(grads, list(tensors), grad_outputs=list(probe), retain_graph=True)
        forms.append(sum((v * p).sum() for v, p in zip(probe, product)).detach().double())
    return torch.stack(forms)


def reduced_forms(model: nn.Module, loader: Iterable, tensors: Sequence[Tensor],
                  probe: Callable[[], List[Tensor]], loss: LossKind, attack: PGD, samples: int,
                  max_examples: Optional[int], reduce: Optional[Reduce]) -> Tuple[Tensor, int]:
    """Per probe, v^T H v of the Hessian of the mean loss over all examples (of all processes), shape (K,),
    and the number of examples. The K probes are drawn once by ``probe()`` and used on every batch."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("the Hessian needs gradients but was called under torch.inference_mode(); run the "
                           "Trainer with inference_mode=False (train.py does) or call it outside inference mode.")
    device = tensors[0].device
    probes = [probe() for _ in range(samples)]
    totals = torch.zeros(samples + 1, dtype=torch.float64, device=device)
    with restore_modes(model, False), torch.enable_grad():
        for x, y in examples(model, loader, attack if loss == "rloss" else None, max_examples):
            totals[:samples] += quadratic_forms(model, x, y, tensors, probes)
            totals[samples] += len(y)
    if reduce is not None:
        totals = reduce(totals)
    count = int(totals[samples])
    if count == 0:
        raise ValueError("a Hessian measure was asked for on a loader without examples")
    return totals[:samples] / count, count


def hessian_trace(model: nn.Module, loader: Iterable, loss: LossKind = "rloss", samples: int = 100,
                  epsilon: float = PAPER_EPSILON, step_size: float = PAPER_STEP_SIZE, steps: int = 20,
                  restarts: int = 1,
                  norm: Norm = "linf", random_start: bool = True, max_examples: Optional[int] = 1000,
                  which: Selection = "all", reduce: Optional[Reduce] = None,
                  generator: Optional[torch.Generator] = None) -> FlatnessResult:
    """Tr(H) of the mean RLoss (at fixed PGD examples) or clean Loss, by Hutchinson's estimator.

    Args:
        model: the network; left exactly as it was.
        loader: batches ``(x, y)`` of [0, 1] images and labels.
        loss: ``"rloss"`` (at adversarial examples found at w) or ``"loss"``.
        samples: Rademacher probe vectors (100).
        epsilon: radius of the input threat model.
        step_size: PGD step size.
        steps: PGD iterations of the adversarial examples (20).
        restarts: PGD restarts, worst case per example (1).
        norm: input threat model.
        random_start: PGD starts at a random point of the ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: tensors of the weight space (see :func:`~lit_robust.weights.select_parameters`).
        reduce: sums a tensor over processes (for data-parallel evaluation).
        generator: random-number generator of the probe vectors.

    Returns:
        ``flatness``: the trace estimate (mean over the probes); ``std``: the standard deviation of the
        single-probe estimates; ``perturbed`` the trace and ``reference`` 0 (there is no second term).
    """
    check_choice(loss, "loss", ("rloss", "loss"))
    check(isinstance(samples, int) and samples >= 1, "samples", samples, "an integer >= 1")
    _, weights = names_and_weights(model, which)
    attack = PGD(epsilon, step_size, steps, restarts=restarts, norm=norm, random_start=random_start)
    forms, count = reduced_forms(model, loader, weights, lambda: rademacher(weights, generator), loss, attack,
                                 samples, max_examples, reduce)
    trace = float(forms.mean())
    return FlatnessResult(flatness=trace, std=float(forms.std(correction=0)), perturbed=trace, reference=0.0,
                          examples=count)
