"""Each activation's value against its closed form and its maximum curvature (Singla et al. 2021, Sec. 4)."""

import math

import pytest
import torch
from torch import nn

from lit_robust.errors import ConfigurationError
from lit_robust.models import ACTIVATIONS, SmallCNN, get_activation, max_curvature

X = torch.linspace(-6, 6, 1201, dtype=torch.float64)
sig = torch.sigmoid


def softplus(x, beta=1.0):
    return torch.log1p(torch.exp(beta * x)) / beta


CLOSED_FORMS = {
    ("relu", ()): lambda x: torch.where(x > 0, x, 0 * x),
    ("leaky_relu", (("slope", 0.2),)): lambda x: torch.where(x >= 0, x, 0.2 * x),
    ("leaky_relu", (("slope", -0.2),)): lambda x: torch.where(x >= 0, x, -0.2 * x),
    ("silu", ()): lambda x: x * sig(x),
    ("pswish", (("beta", 4.0),)): lambda x: x * sig(4.0 * x),
    ("gelu", ()): lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    ("mish", ()): lambda x: x * torch.tanh(softplus(x)),
    ("lisht", ()): lambda x: x * torch.tanh(x),
    ("softplus", (("beta", 3.0),)): lambda x: softplus(x, 3.0),
    ("elu", ()): lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
}


@pytest.mark.parametrize("name, kwargs", list(CLOSED_FORMS))
def test_value_matches_closed_form(name, kwargs):
    act = get_activation(name, **dict(kwargs))
    assert torch.allclose(act(X), CLOSED_FORMS[(name, kwargs)](X), atol=1e-6)


def test_every_name_is_covered():
    assert {name for name, _ in CLOSED_FORMS} == set(ACTIVATIONS)


def _second_derivative_max(f):
    """Independent reference: central finite differences of the closed form on a fine grid."""
    h = 1e-3
    x = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    return ((f(x + h) - 2 * f(x) + f(x - h)) / h ** 2).max().item()


@pytest.mark.parametrize("name, kwargs", [k for k in CLOSED_FORMS if k[0] not in ("relu", "leaky_relu", "elu")])
def test_smooth_curvature_matches_finite_differences(name, kwargs):
    expected = _second_derivative_max(CLOSED_FORMS[(name, kwargs)])
    assert max_curvature(get_activation(name, **dict(kwargs))) == pytest.approx(expected, rel=1e-3)


def test_curvature_order_of_papers_004():
    # Singla et al. 2021 (Sec. 4) rank LiSHT > GELU > Mish > SiLU by decreasing curvature; PSwish grows with beta
    c = {n: max_curvature(get_activation(n)) for n in ("lisht", "gelu", "mish", "silu")}
    assert c["lisht"] > c["gelu"] > c["mish"] > c["silu"]
    assert max_curvature(get_activation("silu")) == pytest.approx(max_curvature(get_activation("pswish", beta=1.0)))
    assert max_curvature(get_activation("pswish", beta=10.0)) > max_curvature(get_activation("pswish", beta=0.5))
    # SiLU's maximum curvature in closed form: f''(x) = sig(x)(1-sig(x))(2 + x(1-2sig(x))), max ~0.5 at 0
    assert c["silu"] == pytest.approx(0.5, abs=1e-3)


def test_leaky_relu_approximate_curvature():
    for k in (-0.2, 0.0, 0.1, 0.5):
        assert max_curvature(get_activation("leaky_relu", slope=k)) == pytest.approx(abs(1 - k))
    assert max_curvature(get_activation("relu")) == 1.0


def test_class_and_unknown_name():
    assert isinstance(get_activation(nn.Tanh), nn.Tanh)
    with pytest.raises(ConfigurationError, match="activation='swish2' is not allowed.*silu"):
        get_activation("swish2")
    with pytest.raises(ConfigurationError, match="activation"):
        SmallCNN(activation="nope")


def test_small_cnn_uses_activation_and_features():
    model = SmallCNN(width=4, activation="pswish", activation_kwargs={"beta": 2.0})
    assert sum(isinstance(m, type(get_activation("pswish"))) and m.beta == 2.0 for m in model.modules()) == 3
    x = torch.rand(3, 1, 8, 8)
    assert model.forward_features(x).shape == (3, model.num_features)
    assert model(x).shape == (3, 10)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_a_misspelt_parameter_is_an_error_for_every_activation(name):
    with pytest.raises(ConfigurationError, match=rf"^activation_kwargs=.*slpoe.* is not allowed: {name} takes"):
        get_activation(name, slpoe=0.2)
    with pytest.raises(ConfigurationError, match="activation_kwargs"):
        SmallCNN(width=4, activation=name, activation_kwargs={"slpoe": 0.2})


def test_a_misspelt_parameter_of_a_class_is_an_error():
    with pytest.raises(ConfigurationError, match="activation_kwargs=.*beta.*SiLU takes inplace"):
        get_activation(nn.SiLU, beta=2.0)


@pytest.mark.parametrize("name, kwargs, check", [
    ("leaky_relu", {"slope": 0.2}, lambda m: m.negative_slope == 0.2),
    ("pswish", {"beta": 2.0}, lambda m: m.beta == 2.0),
    ("softplus", {"beta": 3.0}, lambda m: m.beta == 3.0),
    ("elu", {"alpha": 0.5}, lambda m: m.alpha == 0.5),
    ("gelu", {"approximate": "tanh"}, lambda m: m.approximate == "tanh"),
    ("relu", {"inplace": True}, lambda m: m.inplace),
])
def test_parameters_reach_the_constructor(name, kwargs, check):
    assert check(get_activation(name, **kwargs))
