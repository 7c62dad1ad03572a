"""SAM and ASAM inside AT (Foret et al. 2021 Eq. 2-3; Kwon et al. 2021 Algorithm 1): the update is the
gradient at w + epsilon, w is untouched between the two passes, and ASAM's neighbourhood is invariant
to rescaling a ReLU network neuron by neuron."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_robust.modules import SAM
from tests.helpers import step_and_attack

LR, RHO, ETA = 0.1, 0.05, 0.01


def tiny_network(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=bias), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 10, bias=bias))


def reference_step(model, x_adv, y, adaptive, rho):
    """The two steps written out on copies of the network: g at w; epsilon = rho T^2 g / ||T g|| over every
    trainable tensor (T = |w| + eta on tensors named ``weight`` for ASAM, T = 1 otherwise); one SGD step
    with the gradient at w + epsilon."""
    probe = copy.deepcopy(model).train()
    names, params = zip(*probe.named_parameters())
    g = torch.autograd.grad(F.cross_entropy(probe(x_adv), y), params)
    t = [p.detach().abs() + ETA if adaptive and n.endswith("weight") else torch.ones_like(p)
         for n, p in zip(names, params)]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    epsilon = {n: rho * ti * ti * gi / norm for n, ti, gi in zip(names, t, g)}
    at_w_plus_epsilon = copy.deepcopy(model).train()
    with torch.no_grad():
        for n, p in at_w_plus_epsilon.named_parameters():
            p.add_(epsilon[n])
    F.cross_entropy(at_w_plus_epsilon(x_adv), y).backward()
    updated = {n: p.detach() - LR * at_w_plus_epsilon.get_parameter(n).grad for n, p in model.named_parameters()}
    return updated, epsilon, dict(at_w_plus_epsilon.named_buffers())


@pytest.mark.parametrize("adaptive, rho", [(False, RHO), (True, 0.5)], ids=["SAM", "ASAM"])
def test_update_is_sgd_at_w_plus_epsilon_and_w_is_restored(adaptive, rho, digits):
    module = SAM(tiny_network(), epsilon=0.1, step_size=0.025, train_steps=3, adaptive=adaptive, eta=ETA)
    assert module.rho == rho  # the papers' defaults
    module.train_attack.random_start = False
    x, y = next(iter(digits.train_dataloader()))
    forward_weights = []
    module.model.register_forward_pre_hook(
        lambda m, args: forward_weights.append({n: p.detach().clone() for n, p in m.named_parameters()}))
    before = copy.deepcopy(module.model)
    w0 = {n: p.detach().clone() for n, p in module.model.named_parameters()}

    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    loss, result = step_and_attack(module, (x, y))
    for n, p in module.model.named_parameters():
        assert torch.equal(p, w0[n]), n  # the weights are the same between and after the two passes
    loss.backward()
    optimizer.step()

    expected, epsilon, buffers = reference_step(before, result.x_adv, y, adaptive, rho)
    used = forward_weights[-1]  # the update's forward pass ran at w + epsilon, batch norm included
    total = torch.sqrt(sum(((used[n] - w0[n]) ** 2).sum() for n in w0))
    for n, p in module.model.named_parameters():
        assert torch.allclose(used[n] - w0[n], epsilon[n], atol=1e-6), n
        assert torch.allclose(p, expected[n], atol=1e-6), n
    if not adaptive:
        assert total.item() == pytest.approx(RHO, rel=1e-4)  # on the sphere of radius rho
    for n, b in module.model.named_buffers():  # running statistics updated once, by the update's pass
        assert torch.allclose(b.float(), buffers[n].float(), atol=1e-6), n


def rescaled(network, scale):
    """The same function: hidden unit i's incoming weights times scale_i, its outgoing weights divided by it."""
    copied = copy.deepcopy(network)
    with torch.no_grad():
        copied[1].weight.mul_(scale.view(-1, 1))
        copied[3].weight.div_(scale.view(1, -1))
    return copied


@pytest.mark.parametrize("adaptive", [True, False], ids=["ASAM", "SAM"])
def test_asam_is_invariant_to_rescaling_neurons(adaptive, digits):
    """A bias-free ReLU network and its neuron-wise rescaled twin compute the same function; ASAM (eta = 0)
    perturbs them to networks that compute the same function again, so its loss at w + epsilon agrees;
    SAM's does not."""
    network = nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=False), nn.ReLU(), nn.Linear(16, 10, bias=False))
    scale = torch.linspace(0.2, 5.0, 16)
    twin = rescaled(network, scale)
    x, y = next(iter(digits.train_dataloader()))
    assert torch.allclose(network(x), twin(x), atol=1e-5)
    losses = []
    for net in (network, twin):
        module = SAM(net, epsilon=0.1, step_size=0.025, train_steps=3, adaptive=adaptive, rho=0.5, eta=0.0)
        module.train_attack.random_start = False
        losses.append(step_and_attack(module, (x, y))[0].item())
    if adaptive:
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    else:
        assert abs(losses[0] - losses[1]) > 1e-3


def test_which_selects_the_perturbed_tensors(digits):
    """``which="weights"`` leaves biases and batch normalisation where they are."""
    module = SAM(tiny_network(), epsilon=0.1, step_size=0.025, train_steps=2, which="weights")
    forward_weights = []
    module.model.register_forward_pre_hook(
        lambda m, args: forward_weights.append({n: p.detach().clone() for n, p in m.named_parameters()}))
    w0 = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    step_and_attack(module, next(iter(digits.train_dataloader())))
    moved = {n for n in w0 if not torch.equal(forward_weights[-1][n], w0[n])}
    assert moved == {"1.weight", "4.weight"}
