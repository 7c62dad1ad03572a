"""AWP (Stutz et al. 2021, supplement Eq. 12): the weight perturbation, the update it leads to, untouched weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_robust.attacks import PGD
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import AWP
from lit_robust.modules.losses import trades_loss
from tests.helpers import step_and_attack

XI, LR, LAM = 0.01, 0.1, 6.0


def perturbed_names(model, which):
    """Eq. 12's tensors written out: conv / linear weights, or (``"all"``) also their biases; never batch norm."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    chosen = {id(m.weight) for m in layers}
    if which == "all":
        chosen |= {id(m.bias) for m in layers if m.bias is not None}
    return [n for n, p in model.named_parameters() if id(p) in chosen]


def objective(base, network, x, x_adv, y):
    if base == "at":
        return F.cross_entropy(network(x_adv), y)
    return trades_loss(network(x), network(x_adv), y, LAM)


def reference_step(model, x, x_adv, y, which, base):
    """One AWP step from the paper's text: nu_l = xi ||w_l|| g_l / ||g_l|| at w, then SGD with the gradient
    at w + nu."""
    probe = copy.deepcopy(model).train()  # a throw-away copy for the ascent, so its BN statistics are discarded
    names = perturbed_names(probe, which)
    probe_params = dict(probe.named_parameters())
    grads = torch.autograd.grad(objective(base, probe, x, x_adv, y), [probe_params[n] for n in names])
    at_w_plus_nu = copy.deepcopy(model).train()
    params = dict(at_w_plus_nu.named_parameters())
    nu = {}
    with torch.no_grad():
        for n, g in zip(names, grads):
            nu[n] = XI * params[n].norm() * g / g.norm()
            params[n].add_(nu[n])
    objective(base, at_w_plus_nu, x, x_adv, y).backward()
    with torch.no_grad():
        updated = {n: p.detach() - LR * at_w_plus_nu.get_parameter(n).grad for n, p in model.named_parameters()}
    return updated, nu, dict(at_w_plus_nu.named_buffers())


@pytest.mark.parametrize("which, base", [("weights", "at"), ("all", "at"), ("weights", "trades")])
def test_step_is_sgd_at_w_plus_nu_and_w_is_untouched(which, base, digits):
    torch.manual_seed(0)
    module = AWP(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=3, xi=XI, which=which, base_loss=base,
                 lam=LAM)
    module.train_attack.random_start = False  # deterministic, so the reference sees the same examples
    x, y = next(iter(digits.train_dataloader()))
    forward_weights = []
    module.model.register_forward_pre_hook(
        lambda m, args: forward_weights.append({n: p.detach().clone() for n, p in m.named_parameters()}))
    before = copy.deepcopy(module.model).train()
    w0 = {n: p.detach().clone() for n, p in module.model.named_parameters()}

    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    loss, result = step_and_attack(module, (x, y))
    loss.backward()
    for n, p in module.model.named_parameters():
        assert torch.equal(p, w0[n]), n  # bitwise: the perturbation never touched w
    optimizer.step()

    expected, nu, buffers = reference_step(before, x, result.x_adv, y, which, base)
    used = forward_weights[-1]  # the weights of the update's forward pass
    for n, p in module.model.named_parameters():
        if n in nu:
            assert torch.allclose(used[n] - w0[n], nu[n], atol=1e-6), n
            assert (used[n] - w0[n]).norm().item() == pytest.approx(XI * w0[n].norm().item(), rel=1e-4)
        else:
            assert torch.equal(used[n], w0[n]), n  # biases, batch norm: not perturbed
        assert torch.allclose(p, expected[n], atol=1e-6), n
    assert len(nu) == (4 if which == "weights" else 5)
    for n, b in module.model.named_buffers():  # running statistics updated once, by the update's pass
        assert torch.allclose(b.float(), buffers[n].float(), atol=1e-6), n


def test_training_attack_follows_the_base_loss():
    module = AWP(SmallCNN(width=8), base_loss="trades")
    assert module.train_attack.loss == "kl"
    assert isinstance(AWP(SmallCNN(width=8)).train_attack, PGD)


@pytest.mark.parametrize("base", ["at", "trades"])
def test_no_weight_perturbation_before_warmup_epochs(base, digits, monkeypatch):
    """Before ``warmup_epochs`` every forward pass sees w and the loss is the base loss at w (plain AT /
    TRADES); from that epoch on the update's forward pass sees w + nu with ||nu_l|| = xi ||w_l||."""
    x, y = next(iter(digits.train_dataloader()))
    for epoch, perturbed in ((0, False), (1, False), (2, True)):
        monkeypatch.setattr(AWP, "current_epoch", property(lambda self, e=epoch: e))
        torch.manual_seed(0)
        module = AWP(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=2, xi=XI, base_loss=base, lam=LAM,
                     warmup_epochs=2)
        module.train_attack.random_start = False
        w0 = {n: p.detach().clone() for n, p in module.model.named_parameters()}
        forward_weights = []
        module.model.register_forward_pre_hook(
            lambda m, args: forward_weights.append({n: p.detach().clone() for n, p in m.named_parameters()}))
        loss, result = step_and_attack(module, (x, y))
        moved = {n for n, p in forward_weights[-1].items() if not torch.equal(p, w0[n])}
        if perturbed:
            assert moved == set(perturbed_names(module.model, "weights"))
            for n in moved:
                delta = (forward_weights[-1][n] - w0[n]).norm().item()
                assert delta == pytest.approx(XI * w0[n].norm().item(), rel=1e-4), n
        else:
            assert all(torch.equal(p, w0[n]) for weights in forward_weights for n, p in weights.items())
            module.model.train()
            assert loss.item() == pytest.approx(objective(base, module.model, x, result.x_adv, y).item(), rel=1e-5)


def test_bad_warmup_epochs_is_refused():
    with pytest.raises(ConfigurationError, match="warmup_epochs"):
        AWP(SmallCNN(width=8), warmup_epochs=-1)
