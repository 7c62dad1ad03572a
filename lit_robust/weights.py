"""The per-layer relative weight neighbourhood B_xi(w) (Stutz et al. 2021, supplement Eq. 4, Sec. D).

    B_xi(w) = {w + nu : ||nu_l||_2 <= xi ||w_l||_2 for every layer l}

A "layer" is one parameter tensor: weights and biases are separate layers; batch-normalisation
parameters are excluded. Because the radius is relative to each layer's norm, the neighbourhood
grows and shrinks with the weights, which makes flatness measured in it scale-invariant
(Stutz et al. 2021, supplement Sec. E). Flatness, landscapes, AWP and AMP all use this module.
"""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lit_robust.errors import check, check_choice

Selection = Literal["all", "weights"]
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def select_parameters(model: nn.Module, which: Selection = "all") -> List[Tuple[str, nn.Parameter]]:
    """The tensors that make up B_xi(w), as ``(name, parameter)`` pairs in module order.

    Stutz et al. 2021, supplement Sec. D.

    "Layer" means one parameter tensor: weights and biases are separate layers; batch-normalisation
    parameters (and those of other normalisation layers) are left out, as are frozen tensors. The
    names are those of ``model.named_parameters()``, so they work with ``torch.func.functional_call``.

    Args:
        model: the network.
        which: ``"all"``: every weight and bias of every layer except normalisation layers (the
            flatness measures, Stutz et al. 2021, supplement Sec. D); ``"weights"``: only weights of convolutional
            and linear layers, tensors with at least two dimensions (the paper's AWP).
    """
    check_choice(which, "which", ("all", "weights"))
    selected, seen = [], set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            continue
        for name, parameter in module.named_parameters(recurse=False):
            # a tensor shared by two modules is one layer: perturbing it twice would double nu
            if id(parameter) in seen or not parameter.requires_grad or (which == "weights" and parameter.dim() < 2):
                continue
            seen.add(id(parameter))
            selected.append((f"{module_name}.{name}" if module_name else name, parameter))
    return selected


def names_and_weights(model: nn.Module, which: Selection = "all") -> Tuple[List[str], List[nn.Parameter]]:
    """:func:`select_parameters` as a list of names and a list of tensors; at least one tensor.

    Args:
        model: the network.
        which: ``"all"`` or ``"weights"``, as for :func:`select_parameters`.
    """
    selected = select_parameters(model, which)
    check(len(selected) > 0, "model", type(model).__name__,
          "a network with trainable weights outside normalisation layers")
    return [name for name, _ in selected], [w for _, w in selected]


def trainable_parameters(model: nn.Module) -> Tuple[List[str], List[nn.Parameter]]:
    """Every trainable tensor of ``model``, normalisation layers included, as a list of names and a list
    of tensors: the tensors an optimiser updates (AMP's Delta, SAM's and ASAM's epsilon); at least one.

    Args:
        model: the network.
    """
    selected = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    check(len(selected) > 0, "model", type(model).__name__, "a network with trainable parameters")
    return [name for name, _ in selected], [w for _, w in selected]


def gaussian_direction(weights: Sequence[Tensor], generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """A standard Gaussian tensor shaped like each of ``weights``, before any normalisation.

    Args:
        weights: the layers' tensors.
        generator: random-number generator (on any device); the result is on the weights' devices.
    """
    return [torch.randn(w.shape, generator=generator, dtype=w.dtype,
                        device=w.device if generator is None else generator.device).to(w.device)
            for w in weights]


def layer_norms(tensors: Sequence[Tensor]) -> List[Tensor]:
    """||w_l||_2 of each tensor (float32 scalars), the scale of B_xi(w) (Stutz et al. 2021, supplement Eq. 4)."""
    return [t.detach().float().norm() for t in tensors]


def normalize_direction(direction: Sequence[Tensor], weights: Sequence[Tensor],
                        per: Literal["layer", "filter"] = "layer", scale: float = 1.0) -> List[Tensor]:
    """Rescale a direction to the weights' norms (Stutz et al. 2021, supplement Eq. 1 and 2).

    ``per="layer"`` (Eq. 2): nu_l / ||nu_l|| * ||w_l||. ``per="filter"`` (Eq. 1, Li et al.): the same
    for every filter i (slice along the first dimension) of tensors with two or more dimensions;
    one-dimensional tensors (biases) are normalised as a whole.

    Args:
        direction: one tensor per layer.
        weights: the layers' weights, in the same order.
        per: ``"layer"`` or ``"filter"``.
        scale: multiply the result by this factor (e.g. xi).
    """
    check_choice(per, "per", ("layer", "filter"))
    out = []
    for d, w in zip(direction, weights):
        w = w.detach()
        if per == "filter" and d.dim() > 1:
            d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12).view((-1,) + (1,) * (d.dim() - 1))
            w_norm = w.flatten(1).norm(dim=1).view_as(d_norm)
        else:
            d_norm, w_norm = d.norm().clamp_min(1e-12), w.norm()
        out.append(d / d_norm * w_norm * scale)
    return out


class Neighbourhood:
    """B_xi(w) around the current values of ``weights`` (radii are fixed at construction).

    Args:
        weights: the layers' tensors (see :func:`select_parameters`).
        xi: relative radius, ||nu_l|| <= xi ||w_l|| (0.5 average-case, 0.003 worst-case flatness,
            0.01 AWP).
    """

    def __init__(self, weights: Sequence[Tensor], xi: float) -> None:
        check(xi > 0, "xi", xi, "a number > 0 (relative radius per layer)")
        self.weights = list(weights)
        self.xi = float(xi)
        self.radii = [self.xi * n for n in layer_norms(self.weights)]

    def sample(self, generator: Optional[torch.Generator] = None) -> List[Tensor]:
        """A random nu on the boundary of B_xi(w) (Stutz et al. 2021, supplement Sec. D, average-case flatness).

        Per layer, a Gaussian direction rescaled to norm exactly xi ||w_l||: uniform on the
        per-layer sphere, as the paper's code draws it (the text asks for ||nu_l|| <= xi ||w_l||).

        Args:
            generator: random-number generator (on any device) for reproducible samples.
        """
        return [d / d.norm().clamp_min(1e-12) * r.to(d.dtype)
                for d, r in zip(gaussian_direction(self.weights, generator), self.radii)]

    def sample_inside(self, generator: Optional[torch.Generator] = None) -> List[Tensor]:
        """A random nu inside B_xi(w): the random start of worst-case flatness (Stutz et al. 2021, supplement Eq. 5-7).

        Per layer, a direction uniform on the sphere with a norm drawn uniformly from [0, xi ||w_l||];
        the text says only "random initialization of nu in B_xi(w)", the uniform norm is the
        paper's code.

        Args:
            generator: random-number generator (on any device) for reproducible samples.
        """
        on_sphere = self.sample(generator)
        device = "cpu" if generator is None else generator.device
        fractions = torch.rand(len(on_sphere), generator=generator, device=device).tolist()
        return [n * f for n, f in zip(on_sphere, fractions)]

    def project(self, nu: Sequence[Tensor]) -> List[Tensor]:
        """The Euclidean projection onto B_xi(w), layer by layer (Stutz et al. 2021, supplement Sec. D, after Eq. 7).

        Each nu_l outside its ball ||nu_l|| <= xi ||w_l|| is scaled back onto the sphere; inside, it is kept.
        """
        return [n * (r / n.detach().norm().clamp_min(1e-12)).clamp(max=1.0).to(n.dtype)
                for n, r in zip(nu, self.radii)]

    def contains(self, nu: Sequence[Tensor], rtol: float = 1e-5) -> bool:
        """Whether every nu_l lies inside its ball (up to ``rtol``)."""
        return all(n.detach().norm() <= r * (1 + rtol) for n, r in zip(nu, self.radii))


def parameters_at(names: Sequence[str], weights: Sequence[Tensor], nu: Sequence[Tensor]) -> Dict[str, Tensor]:
    """The network's tensors at w + nu (supplement Eq. 3), by name, for ``torch.func.functional_call``:
    the one "network at w + nu" of the project (the weight-perturbing variants' update, the flatness
    measures' stacked networks). Neither w nor nu is changed; gradients flow to whichever requires them.

    Args:
        names: the names of the perturbed tensors, as in ``model.named_parameters()``.
        weights: the tensors w, in the same order.
        nu: one perturbation per tensor (shapes that broadcast against w, e.g. K stacked perturbations).
    """
    return {name: w + n.to(w.dtype) for name, w, n in zip(names, weights, nu)}


def network_at(model: nn.Module, names: Sequence[str], weights: Sequence[Tensor],
               nu: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``model`` at the weights w + nu (:func:`parameters_at`) as a function of its input; ``model`` itself
    is not changed (unlike :func:`perturbed`, which changes it in place inside a block).

    Args:
        model: the network.
        names: the names of the perturbed tensors, as in ``model.named_parameters()``.
        weights: those tensors, in the same order.
        nu: one perturbation per tensor.
    """
    parameters = parameters_at(names, weights, nu)
    return lambda inputs: functional_call(model, parameters, (inputs,))


@contextmanager
def perturbed(weights: Sequence[Tensor], nu: Sequence[Tensor]) -> Iterator[None]:
    """Evaluate the network at w + nu (Stutz et al. 2021, supplement Eq. 3-5): add ``nu`` to ``weights`` in place inside
    the block and restore the exact values afterwards.

    The original values are copied and copied back (not subtracted), so the weights are restored
    bit for bit, also when the block raises.

    Args:
        weights: the layers' tensors (see :func:`select_parameters`), changed in place.
        nu: one perturbation per tensor, same shapes.
    """
    saved = [w.detach().clone() for w in weights]
    try:
        with torch.no_grad():
            for w, n in zip(weights, nu):
                w.add_(n.to(w.dtype))
        yield
    finally:
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)
