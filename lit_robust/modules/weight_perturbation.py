"""What the variants that perturb the weights for the update (AWP, AMP) need besides the neighbourhood.

- :func:`forward_at`: the network at w + nu as a function of its input
  (:func:`~lit_robust.weights.network_at` with nu held constant). The weights are never
  changed in place: the update's forward pass reads w + nu through ``torch.func.functional_call``,
  so the gradient it gives w is the gradient taken at w + nu, the optimiser then updates w, and
  nothing has to be restored afterwards; w is bit for bit what it was.
- :func:`running_stats_unchanged`: a train-mode forward pass that only serves the weight ascent
  leaves batch normalisation's running statistics as they were (the official AWP code gets this
  from a proxy network; here no proxy network exists, so no extra module joins the module tree).
- :func:`mean_over_processes`: under data-parallel training, the ascent gradient is averaged over
  the processes, so every process takes the same weight perturbation, that of the global batch.
"""

from contextlib import contextmanager
from typing import Callable, Iterator, List, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_robust.weights import network_at


def forward_at(model: nn.Module, names: Sequence[str], weights: Sequence[Tensor],
               nu: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``model`` at the weights ``w + nu``, as a function of its input.

    Gradients flow to the parameters ``w`` themselves; ``nu`` is treated as a constant.

    Args:
        model: the network.
        names: the names of the perturbed parameters, as in ``model.named_parameters()``.
        weights: those parameters, in the same order.
        nu: one perturbation per parameter.
    """
    return network_at(model, names, weights, [n.detach() for n in nu])


@contextmanager
def running_stats_unchanged(model: nn.Module) -> Iterator[None]:
    """Copy every buffer of ``model`` (batch-norm running statistics, counters) and copy it back afterwards.

    Args:
        model: the network whose buffers the block may change.
    """
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def mean_over_processes(tensors: Sequence[Tensor]) -> List[Tensor]:
    """The mean of ``tensors`` over all processes of the default process group (one all-reduce).

    Args:
        tensors: this process's tensors; returned as they are without a process group.
    """
    tensors = list(tensors)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
