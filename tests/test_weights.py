"""The neighbourhood B_xi(w) and the normalisations of Eq. 1-2 (Stutz et al. 2021, supplement Eq. 1, 2 and 4)."""

import pytest
import torch
from torch import nn

from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.weights import (
    Neighbourhood,
    gaussian_direction,
    layer_norms,
    names_and_weights,
    network_at,
    normalize_direction,
    perturbed,
    select_parameters,
)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def test_selection_is_every_weight_and_bias_except_batch_norm():
    model = network()
    names = [name for name, _ in select_parameters(model)]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert [name for name, _ in select_parameters(model, "weights")] == ["0.weight", "4.weight"]
    parameters = dict(model.named_parameters())
    assert all(p is parameters[n] for n, p in select_parameters(model))


def test_selection_counts_a_shared_tensor_once_and_skips_frozen_ones():
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    first.bias.requires_grad_(False)
    model = nn.Sequential(first, second)
    assert [name for name, _ in select_parameters(model)] == ["0.weight", "1.bias"]


def test_names_and_weights_needs_a_tensor():
    names, weights = names_and_weights(network())
    assert len(names) == len(weights) == 4
    with pytest.raises(ConfigurationError, match="model"):
        names_and_weights(nn.Sequential(nn.BatchNorm1d(3)))


def test_small_cnn_selection_leaves_out_its_batch_norms():
    model = SmallCNN(width=4)
    selected = {name for name, _ in select_parameters(model)}
    batch_norm = {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)
                  for p, _ in module.named_parameters()}
    assert batch_norm and not selected & batch_norm
    assert selected | batch_norm == {name for name, _ in model.named_parameters()}


def test_samples_lie_exactly_on_the_per_layer_sphere():
    _, weights = names_and_weights(network())
    neighbourhood = Neighbourhood(weights, xi=0.5)
    for _ in range(3):
        nu = neighbourhood.sample()
        for n, w in zip(nu, weights):
            assert n.shape == w.shape
            assert torch.allclose(n.norm(), 0.5 * w.detach().norm(), rtol=1e-5)
        assert neighbourhood.contains(nu)


def test_samples_are_reproducible_and_differ():
    _, weights = names_and_weights(network())
    neighbourhood = Neighbourhood(weights, xi=0.1)
    a = neighbourhood.sample(torch.Generator().manual_seed(1))
    b = neighbourhood.sample(torch.Generator().manual_seed(1))
    c = neighbourhood.sample(torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[0], c[0])


def test_samples_inside_the_ball():
    _, weights = names_and_weights(network())
    neighbourhood = Neighbourhood(weights, xi=0.2)
    generator = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(20):
        nu = neighbourhood.sample_inside(generator)
        assert neighbourhood.contains(nu)
        ratios += [float(n.norm() / (0.2 * w.detach().norm())) for n, w in zip(nu, weights)]
    assert min(ratios) < 0.5 < max(ratios) <= 1 + 1e-5


def test_projection_onto_the_per_layer_ball():
    _, weights = names_and_weights(network())
    neighbourhood = Neighbourhood(weights, xi=0.1)
    radii = [0.1 * w.detach().norm() for w in weights]
    inside = [0.5 * r * d / d.norm() for r, d in zip(radii, gaussian_direction(weights))]
    outside = [3.0 * r * d / d.norm() for r, d in zip(radii, gaussian_direction(weights))]
    assert all(torch.equal(p, n) for p, n in zip(neighbourhood.project(inside), inside))
    projected = neighbourhood.project(outside)
    for p, n, r in zip(projected, outside, radii):
        assert torch.allclose(p.norm(), r, rtol=1e-5)
        assert torch.allclose(p, n * (r / n.norm()), rtol=1e-5, atol=1e-8)
    # projecting a mix keeps inner layers and scales outer ones
    mixed = neighbourhood.project([inside[0], outside[1], inside[2], outside[3]])
    assert torch.equal(mixed[0], inside[0]) and torch.allclose(mixed[1].norm(), radii[1], rtol=1e-5)
    assert all(torch.allclose(a, b) for a, b in zip(neighbourhood.project(projected), projected))


def test_per_layer_normalisation_eq_2():
    _, weights = names_and_weights(network())
    direction = gaussian_direction(weights)
    normalised = normalize_direction(direction, weights, per="layer", scale=0.25)
    for n, d, w in zip(normalised, direction, weights):
        assert torch.allclose(n.norm(), 0.25 * w.detach().norm(), rtol=1e-5)
        assert torch.allclose(n / n.norm(), d / d.norm(), atol=1e-6)


def test_per_filter_normalisation_eq_1():
    _, weights = names_and_weights(network())
    direction = gaussian_direction(weights)
    normalised = normalize_direction(direction, weights, per="filter")
    conv, bias = normalised[0], normalised[1]
    for i in range(conv.shape[0]):
        assert torch.allclose(conv[i].norm(), weights[0][i].detach().norm(), rtol=1e-5)
        assert torch.allclose(conv[i] / conv[i].norm(), direction[0][i] / direction[0][i].norm(), atol=1e-6)
    assert torch.allclose(bias.norm(), weights[1].detach().norm(), rtol=1e-5)  # a bias is one "filter"
    linear = normalised[2]
    assert torch.allclose(linear.norm(dim=1), weights[2].detach().norm(dim=1), rtol=1e-5)


def test_perturbed_restores_bit_for_bit():
    model = network()
    _, weights = names_and_weights(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # values where (w + nu) - nu != w in float32: restoring by subtraction would not be exact
    nu = [torch.full_like(w, 1e4) + torch.randn_like(w) for w in weights]
    with perturbed(weights, nu):
        assert torch.equal(weights[0].detach(), before["0.weight"] + nu[0])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.equal((before["0.weight"] + nu[0]) - nu[0], before["0.weight"])
    with pytest.raises(RuntimeError, match="inside"):
        with perturbed(weights, nu):
            raise RuntimeError("inside")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_batch_norm_parameters_are_never_perturbed():
    model = network()
    _, weights = names_and_weights(model)
    batch_norm = {k: v.clone() for k, v in model[1].state_dict().items()}
    with perturbed(weights, Neighbourhood(weights, 0.5).sample()):
        assert all(torch.equal(v, batch_norm[k]) for k, v in model[1].state_dict().items())


def test_radii_are_relative_to_the_original_weights():
    _, weights = names_and_weights(network())
    neighbourhood = Neighbourhood(weights, xi=0.5)
    assert all(torch.allclose(r, 0.5 * n) for r, n in zip(neighbourhood.radii, layer_norms(weights)))
    with pytest.raises(ConfigurationError, match="xi"):
        Neighbourhood(weights, xi=0.0)


def test_network_at_w_plus_nu_is_the_network_with_nu_added_and_changes_nothing():
    model = network().eval()
    names, weights = names_and_weights(model)
    nu = gaussian_direction(weights, torch.Generator().manual_seed(1))
    before = {name: w.detach().clone() for name, w in model.named_parameters()}
    x = torch.rand(5, 1, 8, 8)
    logits = network_at(model, names, weights, nu)(x)
    assert all(torch.equal(w, before[name]) for name, w in model.named_parameters())  # never in place
    with perturbed(weights, nu), torch.no_grad():
        expected = model(x)
    assert torch.allclose(logits, expected, atol=1e-6)
    logits.sum().backward()  # the gradient reaches w
    assert all(w.grad is not None for w in weights)
