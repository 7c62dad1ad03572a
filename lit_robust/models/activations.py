"""Activation functions by name or class, and their maximum curvature (Singla et al. 2021, Sec. 4).

``get_activation("silu")`` and ``get_activation(nn.SiLU)`` both give a module, so a YAML config can
name an activation and Python code can pass a class. Parameters travel as keyword arguments:
``get_activation("pswish", beta=2.0)``, ``get_activation("leaky_relu", slope=0.1)``,
``get_activation("softplus", beta=5.0)``.

Curvature follows Singla et al. 2021: for a smooth activation the maximum of its second derivative,
max_x f''(x); for LeakyReLU with slope k the "approximate curvature" |1 - k| (the jump of the
slope at 0), and 1 for ReLU (k = 0).
"""

import inspect
import math
from typing import Callable, Dict, List, Type, Union

import torch
from torch import Tensor, nn

from lit_robust.errors import ConfigurationError, check


class PSwish(nn.Module):
    """Parametric Swish, x * sigmoid(beta * x) with a fixed beta (Singla et al. 2021, Sec. 4.3); beta = 1 is SiLU."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        check(beta > 0, "beta", beta, "a number > 0")
        self.beta = float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class LiSHT(nn.Module):
    """Linearly scaled hyperbolic tangent, x * tanh(x) (Singla et al. 2021, Sec. 4)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.tanh(x)


def _relu(inplace: bool = False) -> nn.Module:
    return nn.ReLU(inplace=inplace)


def _leaky_relu(slope: float = 0.01) -> nn.Module:
    return nn.LeakyReLU(negative_slope=slope)


def _softplus(beta: float = 1.0) -> nn.Module:
    check(beta > 0, "beta", beta, "a number > 0")
    return nn.Softplus(beta=beta)


def _elu(alpha: float = 1.0) -> nn.Module:
    check(alpha > 0, "alpha", alpha, "a number > 0")
    return nn.ELU(alpha=alpha)


def _gelu(approximate: str = "none") -> nn.Module:
    return nn.GELU(approximate=approximate)


# each factory takes exactly the activation's parameters, so that a misspelt one is an error
_FACTORIES: Dict[str, Callable[..., nn.Module]] = {
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "silu": nn.SiLU,
    "pswish": PSwish,
    "gelu": _gelu,
    "mish": nn.Mish,
    "lisht": LiSHT,
    "softplus": _softplus,
    "elu": _elu,
}

ACTIVATIONS = tuple(_FACTORIES)


def get_activation(name_or_class: Union[str, Type[nn.Module]], **kwargs) -> nn.Module:
    """A new activation module.

    Args:
        name_or_class: one of :data:`ACTIVATIONS` or an ``nn.Module`` class.
        **kwargs: the activation's parameters (``slope``, ``beta``, ``alpha``); for a class, its
            constructor arguments.
    """
    if isinstance(name_or_class, type) and issubclass(name_or_class, nn.Module):
        factory, name = name_or_class, name_or_class.__name__
    else:
        name = str(name_or_class).lower()
        if name not in _FACTORIES:
            raise ConfigurationError(
                f"activation={name_or_class!r} is not allowed: activation must be one of "
                + ", ".join(ACTIVATIONS) + " (or an nn.Module class).")
        factory = _FACTORIES[name]
    parameters = parameter_names(factory)
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ConfigurationError(
            f"activation_kwargs={kwargs!r} is not allowed: {name} takes "
            + (", ".join(parameters) if parameters else "no parameters") + f" (not {', '.join(unknown)}).")
    return factory(**kwargs)


def parameter_names(factory: Callable[..., nn.Module]) -> List[str]:
    """The keyword arguments ``factory`` (a function or an ``nn.Module`` class) takes."""
    signature = inspect.signature(factory)
    return [name for name, parameter in signature.parameters.items()
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]


def max_curvature(activation: nn.Module, low: float = -10.0, high: float = 10.0, points: int = 20001) -> float:
    """Maximum curvature of an activation module (Singla et al. 2021, Sec. 4).

    ReLU and LeakyReLU are not twice differentiable; their "approximate curvature" is the jump of
    the slope at 0, |1 - k| (1 for ReLU). For smooth activations max f''(x) is found numerically
    with autograd on a grid over [low, high] (the maxima of the activations here lie near 0).
    """
    if isinstance(activation, nn.LeakyReLU):
        return abs(1.0 - activation.negative_slope)
    if isinstance(activation, nn.ReLU):
        return 1.0
    x = torch.linspace(low, high, points, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (first,) = torch.autograd.grad(activation(x).sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(first.sum(), x)
    value = second.max().item()
    return value if math.isfinite(value) else float("inf")
