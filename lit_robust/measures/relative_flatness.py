"""Relative flatness of the feature layer (Petzka et al., NeurIPS 2021, "Relative Flatness and Generalization", Def. 3).

For the feature layer, the last linear layer with weight matrix w (d x m: row w_s holds the
weights of output neuron s),

    kappa(w) = sum_{s, s'} <w_s, w_s'> Tr(H_{s,s'}(w)),

H_{s,s'} the m x m block of the Hessian of the mean loss with respect to rows w_s and w_s'. It is
invariant to rescaling the layers below against the feature layer. Writing M = w w^T,
kappa = sum_j sum_{s,s'} M_{s s'} H_{(s,j),(s',j)} = E[<V, H V>] for the probe V = w Xi with Xi an
m x m matrix of independent Rademacher entries (then E[V_{sj} V_{s'j'}] = M_{s s'} [j = j']), so
kappa is estimated like a Hessian trace by Hutchinson's estimator
(:mod:`lit_robust.measures.hessian_trace`), one Hessian-vector product per probe.

In RLoss the Hessian is that of the loss at adversarial examples found by PGD at w and then held
fixed; in clean Loss that of the clean loss. Conventions of the authors' public code
(kampmichael/RelativeFlatnessAndGeneralization), followed here: the Hessian of the *mean* loss over
the examples; the bias of the feature layer is not part of w. Differences: their code computes the
exact Hessian blocks (this module estimates the sum); their comparison script first rescales the
feature layer by the standard deviation of its inputs and adds a weight-decay term 2 alpha
||w_s||^2, neither of which is done here.
"""

from typing import Optional

import torch
from torch import Tensor, nn

from lit_robust.errors import check
from lit_robust.measures.base import Examples, MeasureResult, Reduce
from lit_robust.measures.hessian_trace import HutchinsonMeasure, rademacher
from lit_robust.measures.registry import register_measure


def feature_layer(model: nn.Module) -> Tensor:
    """The weight matrix (d x m) of the last ``nn.Linear`` of ``model``, in module order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    check(len(linears) > 0, "model", type(model).__name__, "a network whose last layer is an nn.Linear")
    return linears[-1].weight


@register_measure("relative_loss", loss="loss")
@register_measure("relative_rloss", loss="rloss")
class RelativeFlatness(HutchinsonMeasure):
    """kappa(w) of the last linear layer (Petzka et al. 2021, Def. 3), by Hutchinson's estimator.

    ``flatness`` is kappa (mean over the probes), ``std`` the standard deviation of the single-probe
    estimates, ``perturbed`` kappa and ``reference`` 0.

    The settings are those of :class:`~lit_robust.measures.hessian_trace.HutchinsonMeasure` (``samples``
    probe matrices V = w Xi; ``which`` does not apply: the tensor is the feature layer's weight).
    """

    @property
    def name(self) -> str:
        return f"relative_{self.loss}"

    def measure(self, model: nn.Module, batches: Examples, reduce: Optional[Reduce],
                generator: Optional[torch.Generator]) -> MeasureResult:
        w = feature_layer(model)

        def probe():
            (xi,) = rademacher([w.new_empty(w.shape[1], w.shape[1])], generator)
            return [w.detach() @ xi]

        return self.forms(model, batches, [w], probe, reduce)


relative_flatness = RelativeFlatness.once
"""The functional twin: ``relative_flatness(model, loader, reduce=None, generator=None, **settings)``."""
