"""AMP (Yan et al. 2022, Algorithm 1): Delta stays in its L2 ball, adversarial examples are regenerated at
theta + Delta in every inner iteration, and the update uses the gradient at theta + Delta."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lit_robust.attacks import PGD
from lit_robust.models import SmallCNN
from lit_robust.modules import AMP

RADIUS, LR, ITERATIONS = 0.1, 0.1, 3


def at_weights(model, theta, delta):
    """A copy of ``model`` in train mode with weights theta + Delta."""
    copied = copy.deepcopy(model).train()
    with torch.no_grad():
        for n, p in copied.named_parameters():
            p.copy_(theta[n] + delta[n])
    return copied


def reference_amp(model, x, y, attack, xi):
    """Algorithm 1 written out with copies of the network: returns the updated weights, the attack
    weights and adversarial examples of each inner iteration, the final Delta and the final buffers."""
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = {n: torch.zeros_like(p) for n, p in theta.items()}
    attacked_at, examples = [], []
    for _ in range(ITERATIONS):
        network = at_weights(model, theta, delta)
        attacked_at.append({n: theta[n] + delta[n] for n in theta})
        x_adv = attack(network, x, y)  # lines 6-9, at theta + Delta
        examples.append(x_adv)
        names, params = zip(*network.named_parameters())
        b = torch.autograd.grad(F.cross_entropy(network(x_adv), y), params)  # line 10
        delta = {n: delta[n] + xi * g for n, g in zip(names, b)}  # line 11
        norm = torch.sqrt(sum((d ** 2).sum() for d in delta.values()))
        if norm > RADIUS:  # lines 12-14
            delta = {n: RADIUS * d / norm for n, d in delta.items()}
    network = at_weights(model, theta, delta)
    F.cross_entropy(network(examples[-1]), y).backward()  # line 16
    updated = {n: theta[n] - LR * p.grad for n, p in network.named_parameters()}  # line 17
    return updated, attacked_at, examples, delta, dict(network.named_buffers())


@pytest.mark.parametrize("xi", [1.0, 1e-4], ids=["projected", "inside"])
def test_inner_iterations_and_update_follow_algorithm_1(xi, digits):
    torch.manual_seed(0)
    module = AMP(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=3, delta=RADIUS, xi=xi,
                 inner_iterations=ITERATIONS)
    module.train_attack = PGD(0.1, 0.025, 3, keep_best=False, random_start=False)  # deterministic
    module.train()
    module.log_dict = lambda *a, **k: None
    x, y = next(iter(digits.train_dataloader()))
    seen = {"attacked_at": [], "examples": [], "forward_weights": []}
    original = module.train_attack.run

    def recording_run(model, *args, **kwargs):
        seen["attacked_at"].append({n: p.detach().clone() for n, p in model.named_parameters()})
        result = original(model, *args, **kwargs)
        seen["examples"].append(result.x_adv)
        return result

    module.train_attack.run = recording_run
    module.model.register_forward_pre_hook(
        lambda m, args: seen["forward_weights"].append({n: p.detach().clone() for n, p in m.named_parameters()}))
    before = copy.deepcopy(module.model)
    theta = {n: p.detach().clone() for n, p in module.model.named_parameters()}

    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    module.training_step((x, y), 0)["loss"].backward()
    for n, p in module.model.named_parameters():
        assert torch.equal(p, theta[n]), n  # theta itself is restored bit for bit
    optimizer.step()

    attack = PGD(0.1, 0.025, 3, keep_best=False, random_start=False)
    updated, attacked_at, examples, delta, buffers = reference_amp(before, x, y, attack, xi)
    assert len(seen["attacked_at"]) == ITERATIONS
    for ours, theirs in zip(seen["attacked_at"], attacked_at):  # each attack ran at theta + Delta
        assert all(torch.allclose(ours[n], theirs[n], atol=1e-6) for n in theta)
    for ours, theirs in zip(seen["examples"], examples):
        assert torch.allclose(ours, theirs, atol=1e-6)
    final = seen["forward_weights"][-1]  # the update's forward pass
    used = torch.sqrt(sum(((final[n] - theta[n]) ** 2).sum() for n in theta))
    assert used <= RADIUS * (1 + 1e-5)
    if xi == 1.0:
        assert used == pytest.approx(RADIUS, rel=1e-4)
        assert not torch.equal(seen["examples"][0], seen["examples"][1])  # regenerated, not reused
    else:
        assert used < 0.5 * RADIUS
    assert all(torch.allclose(final[n] - theta[n], delta[n], atol=1e-6) for n in theta)
    for n, p in module.model.named_parameters():
        assert torch.allclose(p, updated[n], atol=1e-6), n
    for n, b in module.model.named_buffers():  # running statistics updated by the update's pass only
        assert torch.allclose(b.float(), buffers[n].float(), atol=1e-6), n
