"""PGD-tau (Zhang et al. 2020, Algorithm 1) and FriendlyAT: where each example stops, pass counts, training."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_robust.attacks import FriendlyPGD
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import FriendlyAT
from tests.helpers import SMALL_ATTACKS, count_passes, robust_error_after_training, small_network

C, ALPHA, K = 0.53, 1 / 16, 7


def threshold_model():
    """Two classes on a one-pixel image v: class 1 exactly when v > C. For label 0 every ascent step adds ALPHA."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0], [10.0]]))
        model[1].bias.copy_(torch.tensor([0.0, -10.0 * C]))
    return model


@pytest.mark.parametrize("tau", [0, 1, 2, 3])
def test_stops_tau_steps_after_the_flip_and_never_flipped_run_all_steps(tau):
    # the label flips at iterate k* = ceil((C - v0) / ALPHA): 1, 5, never within K (9), already at the start (0)
    v0 = torch.tensor([0.5, 0.25, 0.0, 0.75])
    flip_at = torch.tensor([1, 5, 9, 0])
    x, y = v0.view(-1, 1, 1, 1), torch.zeros(4, dtype=torch.long)
    x_adv = FriendlyPGD(epsilon=1.0, step_size=ALPHA, steps=K, tau=tau)(threshold_model(), x, y)
    steps_taken = torch.clamp(flip_at + tau, max=K)
    assert torch.allclose(x_adv.flatten(), v0 + steps_taken * ALPHA)
    if tau == 0:
        assert x_adv[3].item() == v0[3].item()  # misclassified at the start: no adversarial example


def reference_pgd_tau(model, x, y, epsilon, alpha, steps, tau):
    """Algorithm 1 of Zhang et al. (2020) for one example at a time, from x, as written in the paper."""
    out = []
    for xi, yi in zip(x, y):
        x_tilde, budget, k = xi.clone(), tau, steps
        while k > 0:
            x_tilde.requires_grad_(True)
            logits = model(x_tilde[None])
            wrong = logits.argmax(dim=1).item() != yi.item()
            if wrong and budget == 0:
                break
            if wrong:
                budget -= 1
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, yi[None]), x_tilde)
            x_tilde = x_tilde.detach() + alpha * grad.sign()
            x_tilde = torch.min(torch.max(x_tilde, xi - epsilon), xi + epsilon).clamp(0, 1)
            k -= 1
        out.append(x_tilde.detach())
    return torch.stack(out)


@pytest.mark.parametrize("tau", [0, 1, 3])
def test_batched_attack_equals_the_per_example_algorithm(tau):
    torch.manual_seed(0)
    model = small_network()
    x, y = torch.rand(48, 1, 8, 8), torch.randint(0, 10, (48,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):  # partly fitted, so that labels flip at different iterations
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    expected = reference_pgd_tau(model, x, y, 0.1, 0.02, 7, tau)
    assert torch.allclose(FriendlyPGD(0.1, 0.02, 7, tau=tau)(model, x, y), expected, atol=1e-6)


def test_pass_counts_with_pgd7(digits):
    batch = next(iter(digits.train_dataloader()))
    torch.manual_seed(0)
    never_stops = FriendlyAT(SmallCNN(width=8), tau=7, train_steps=7, **SMALL_ATTACKS)
    assert count_passes(never_stops, batch) == (8, 7, 1)  # 7 checks cannot use up tau = 7: as PGD-7 AT
    x, _ = batch
    stops_at_once = FriendlyAT(SmallCNN(width=8), tau=0, train_steps=7, **SMALL_ATTACKS)
    with torch.no_grad():
        wrong_labels = (stops_at_once.model.eval()(x).argmax(dim=1) + 1) % 10
    assert count_passes(stops_at_once.train(), (x, wrong_labels)) == (2, 0, 1)  # everything misclassified


def test_trains_robust_on_digits(digits, tmp_path):
    torch.manual_seed(0)
    module = FriendlyAT(small_network(), tau=2, train_steps=3, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
                        **SMALL_ATTACKS)
    assert robust_error_after_training(module, digits, tmp_path, max_epochs=4) < 0.6  # chance is 0.9


def test_bad_tau_fails_at_construction():
    with pytest.raises(ConfigurationError, match="^tau="):
        FriendlyAT(SmallCNN(width=8), tau=-1)
