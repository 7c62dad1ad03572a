"""Trace of the Hessian of the (robust) loss in weight space by Hutchinson's estimator.

    Tr(H) = E_v[v^T H v],  v with independent Rademacher entries (Hutchinson 1990),

H the Hessian of the mean cross-entropy over the first ``max_examples`` examples with respect to the
tensors of :func:`~lit_robust.weights.select_parameters` (batch normalisation excluded), each
v^T H v by one Hessian-vector product (double backpropagation). In RLoss the examples are fixed
adversarial examples, found by PGD at w before differentiating (the Hessian of L(f(x_adv; w), y) at
fixed x_adv, as the measures of :mod:`lit_robust.measures.landscape` treat it); in clean Loss the clean ones.
It sits beside lambda_max (:func:`~lit_robust.measures.landscape.hessian_max_eigenvalue`) and, like it, is not
invariant to rescaling the weights (Stutz et al. 2021, supplement Sec. E).

The same probe vectors serve every batch, so the estimate is v^T H v of the Hessian of the loss over
all examples; the per-probe sums are reduced over processes in one collective, like
:class:`~lit_robust.measures.flatness.FlatnessMeasures`. Eval mode, weights and ``.grad`` untouched.
"""

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lit_robust.attacks import PGD, Norm, per_example_loss
from lit_robust.errors import check
from lit_robust.measures.base import Examples, LossKind, MeasureResult, Reduce, reduced
from lit_robust.measures.hessian import HessianMeasure
from lit_robust.measures.registry import register_measure
from lit_robust.measures.settings import FlatnessSettings
from lit_robust.weights import Selection, names_and_weights


def rademacher(tensors: Sequence[Tensor], generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """A tensor of independent +-1 entries shaped like each of ``tensors`` (on their devices)."""
    device = "cpu" if generator is None else generator.device
    return [(torch.randint(0, 2, t.shape, generator=generator, device=device) * 2 - 1).to(t.device, t.dtype)
            for t in tensors]


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


def reduced_forms(model: nn.Module, batches: Iterable[Tuple[Tensor, Tensor]], tensors: Sequence[Tensor],
                  probe: Callable[[], List[Tensor]], attack: Optional[PGD], samples: int,
                  reduce: Optional[Reduce]) -> Tuple[Tensor, int]:
    """Per probe, v^T H v of the Hessian of the mean loss over all examples (of all processes), shape (K,),
    and the number of examples. The K probes are drawn once by ``probe()`` and used on every batch; each
    batch is replaced by its adversarial examples under ``attack`` at the current weights (fixed from then
    on), or kept clean when ``attack`` is None."""
    device = tensors[0].device
    probes = [probe() for _ in range(samples)]
    totals = torch.zeros(samples + 1, dtype=torch.float64, device=device)
    for x, y in batches:
        if attack is not None:
            x = attack(model, x, y).detach()
        totals[:samples] += quadratic_forms(model, x, y, tensors, probes)
        totals[samples] += len(y)
    totals = reduced(totals, reduce, "a Hessian measure", count=samples)
    count = int(totals[samples])
    return totals[:samples] / count, count


class HutchinsonMeasure(HessianMeasure):
    """What the Hutchinson estimates share: ``samples`` probes, and PGD for the adversarial examples of RLoss.

    Args:
        samples: probes (100).
        loss: the loss, PGD and weight space of :class:`~lit_robust.measures.hessian.HessianMeasure`, and its
            other settings.
    """

    def __init__(self, *, loss: LossKind = "rloss", samples: int = 100, steps: int = 20, restarts: int = 1,
                 epsilon: Optional[float] = None, step_size: Optional[float] = None, norm: Optional[Norm] = None,
                 random_start: bool = True, max_examples: Optional[int] = 1000, which: Selection = "all") -> None:
        super().__init__(loss=loss, steps=steps, restarts=restarts, epsilon=epsilon, step_size=step_size, norm=norm,
                         random_start=random_start, max_examples=max_examples, which=which)
        check(isinstance(samples, int) and samples >= 1, "samples", samples, "an integer >= 1")
        self.samples = samples

    @classmethod
    def from_settings(cls, settings: FlatnessSettings, options: Dict[str, Any], **fixed: Any) -> "HutchinsonMeasure":
        return cls(samples=settings.hutchinson_samples, steps=settings.pgd_steps, max_examples=None, **fixed)

    def forms(self, model: nn.Module, batches: Examples, tensors: Sequence[Tensor],
              probe: Callable[[], List[Tensor]], reduce: Optional[Reduce]) -> MeasureResult:
        """The mean of v^T H v over the probes drawn by ``probe()`` (:func:`reduced_forms`) as the result."""
        attack = self.attack(self.steps, self.restarts)
        forms, count = reduced_forms(model, batches, tensors, probe, attack if self.robust else None, self.samples,
                                     reduce)
        mean = float(forms.mean())
        return MeasureResult(flatness=mean, std=float(forms.std(correction=0)), perturbed=mean, reference=0.0,
                             examples=count)


@register_measure("hessian_trace_loss", loss="loss")
@register_measure("hessian_trace_rloss", loss="rloss")
class HessianTrace(HutchinsonMeasure):
    """Tr(H) of the mean RLoss (at fixed PGD examples) or clean Loss, by Hutchinson's estimator.

    ``flatness`` is the trace estimate (mean over the probes), ``std`` the standard deviation of the
    single-probe estimates, ``perturbed`` the trace and ``reference`` 0 (there is no second term). The
    settings are those of :class:`HutchinsonMeasure` (``samples`` Rademacher probe vectors).
    """

    @property
    def name(self) -> str:
        return f"hessian_trace_{self.loss}"

    def measure(self, model: nn.Module, batches: Examples, reduce: Optional[Reduce],
                generator: Optional[torch.Generator]) -> MeasureResult:
        _, weights = names_and_weights(model, self.which)
        return self.forms(model, batches, weights, lambda: rademacher(weights, generator), reduce)


hessian_trace = HessianTrace.once
"""The functional twin: ``hessian_trace(model, loader, reduce=None, generator=None, **settings)``."""
