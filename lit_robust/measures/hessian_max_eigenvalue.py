"""lambda_max, the largest eigenvalue of the Hessian of the (robust) loss in weight space, by power iteration.

Stutz et al. 2021 (supplement Table A, following Li et al. 2018) report lambda_max of the Hessian of the clean
loss; it is not invariant to rescaling the weights (supplement Sec. E). Here H is the Hessian of the mean loss
over the first ``max_examples`` examples with respect to the tensors of
:func:`~lit_robust.weights.select_parameters` (batch normalisation excluded): v <- Hv / ||Hv|| with
Hessian-vector products by double backpropagation, summed over the batches and over processes (one collective
per iteration, so every process follows the same vector), until lambda = v^T H v changes by less than ``tol``
relative. Power iteration finds the eigenvalue of largest magnitude, which at a minimum is the largest. In
RLoss the examples are adversarial examples found by PGD at w and then held fixed, as for the Hessian trace
(:mod:`lit_robust.measures.hessian_trace`). :func:`~lit_robust.measures.landscape.hessian_max_eigenvalue` is the same
on one batch, with its eigenvector.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from lit_robust.attacks import Norm, per_example_loss
from lit_robust.errors import check
from lit_robust.measures.base import Examples, LossKind, MeasureResult, Reduce, reduced
from lit_robust.measures.hessian import HessianMeasure
from lit_robust.measures.registry import register_measure
from lit_robust.measures.settings import FlatnessSettings
from lit_robust.weights import Selection, gaussian_direction, names_and_weights


@dataclass
class Eigenpair:
    """The eigenvalue of largest magnitude found by power iteration and its unit eigenvector (one tensor per layer)."""

    value: float
    vector: List[Tensor]


def power_iteration(hvp: Callable[[List[Tensor]], List[Tensor]], start: List[Tensor], iterations: int,
                    tol: float) -> Eigenpair:
    """Power iteration v <- Hv / ||Hv|| from ``start`` with the Hessian-vector product ``hvp``, at most
    ``iterations`` times, stopping when lambda = v^T H v changes by less than ``tol`` relative."""
    vector, value = start, 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        vector = [v / norm for v in vector]
        product = hvp(vector)
        previous, value = value, float(sum((v * p).sum() for v, p in zip(vector, product)))
        vector = [p.detach() for p in product]
        if abs(value - previous) <= tol * abs(value):
            break
    norm = torch.sqrt(sum((v * v).sum() for v in vector))
    return Eigenpair(value=value, vector=[v / norm for v in vector])


@register_measure("lambda_max_rloss", loss="rloss")
@register_measure("lambda_max_loss", loss="loss")
class HessianMaxEigenvalue(HessianMeasure):
    """lambda_max of the Hessian of the mean RLoss (at fixed PGD examples) or clean Loss over the examples.

    ``flatness`` and ``perturbed`` are lambda_max, ``reference`` 0, ``std`` 0; ``details`` holds
    ``iterations``, the power iterations run.

    Args:
        iterations: power iterations at most (100).
        tol: relative change of lambda at which to stop (1e-4).
        loss: the loss, PGD and weight space of :class:`~lit_robust.measures.hessian.HessianMeasure`, and its
            other settings.
    """

    def __init__(self, *, loss: LossKind = "rloss", iterations: int = 100, tol: float = 1e-4, steps: int = 20,
                 restarts: int = 1, epsilon: Optional[float] = None, step_size: Optional[float] = None,
                 norm: Optional[Norm] = None, random_start: bool = True, max_examples: Optional[int] = 1000,
                 which: Selection = "all") -> None:
        super().__init__(loss=loss, steps=steps, restarts=restarts, epsilon=epsilon, step_size=step_size, norm=norm,
                         random_start=random_start, max_examples=max_examples, which=which)
        check(isinstance(iterations, int) and iterations >= 1, "iterations", iterations, "an integer >= 1")
        check(tol >= 0, "tol", tol, "a number >= 0")
        self.iterations, self.tol = iterations, tol

    @property
    def name(self) -> str:
        return f"lambda_max_{self.loss}"

    @classmethod
    def from_settings(cls, settings: FlatnessSettings, options: Dict[str, Any], **fixed: Any) -> "HessianMaxEigenvalue":
        return cls(steps=settings.pgd_steps, max_examples=None, **fixed)

    def measure(self, model: nn.Module, batches: Examples, reduce: Optional[Reduce],
                generator: Optional[torch.Generator]) -> MeasureResult:
        _, weights = names_and_weights(model, self.which)
        attack = self.attack(self.steps, self.restarts) if self.robust else None
        gradients, count = [], torch.zeros(1, dtype=torch.float64, device=weights[0].device)
        for x, y in batches:
            if attack is not None:
                x = attack(model, x, y).detach()
            loss = per_example_loss(model(x), y).sum()
            gradients.append(torch.autograd.grad(loss, weights, create_graph=True))
            count += len(y)
        count = float(reduced(count, reduce, self.name)[0])
        sizes = [w.numel() for w in weights]
        runs = []

        def hvp(vector: List[Tensor]) -> List[Tensor]:
            total = torch.zeros(sum(sizes), dtype=weights[0].dtype, device=weights[0].device)
            for grads in gradients:
                product = torch.autograd.grad(grads, weights, grad_outputs=vector, retain_graph=True)
                total += torch.cat([p.reshape(-1) for p in product])
            total = (total if reduce is None else reduce(total)) / count
            runs.append(1)
            return [t.view_as(w) for t, w in zip(total.split(sizes), weights)]

        pair = power_iteration(hvp, gaussian_direction(weights, generator), self.iterations, self.tol)
        return MeasureResult(flatness=pair.value, std=0.0, perturbed=pair.value, reference=0.0, examples=int(count),
                             details={"iterations": float(len(runs))})


hessian_max_eigenvalue = HessianMaxEigenvalue.once
"""The functional twin: ``hessian_max_eigenvalue(model, loader, reduce=None, generator=None, **settings)``."""
