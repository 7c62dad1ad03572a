"""MART: the losses (Stutz et al. 2021, supplement Eq. 14-15) against references written from the equations; the
training step."""

import pytest
import torch

from lit_robust.models import SmallCNN
from lit_robust.modules import MART
from lit_robust.modules.losses import mart_binary_cross_entropy, mart_loss
from tests.helpers import step_and_attack


def reference_bce(logits, y):
    """Eq. 14 per example from the probabilities: -log p_y - log(1 - max_{k != y} p_k)."""
    p = torch.softmax(logits.double(), dim=1)
    values = []
    for i, label in enumerate(y.tolist()):
        runner_up = max(p[i, k] for k in range(p.shape[1]) if k != label)
        values.append(-torch.log(p[i, label]) - torch.log(1 - runner_up))
    return torch.stack(values)


def reference_mart(clean_logits, adversarial_logits, y, lam):
    """Eq. 15, mean over the batch: BCE(f(x_adv)) + lam * KL(f(x) || f(x_adv)) * (1 - f_y(x))."""
    p, q = torch.softmax(clean_logits.double(), dim=1), torch.softmax(adversarial_logits.double(), dim=1)
    kl = (p * torch.log(p / q)).sum(dim=1)
    weight = 1 - p[torch.arange(len(y)), y]
    return (reference_bce(adversarial_logits, y) + lam * kl * weight).mean()


def test_binary_cross_entropy_matches_equation_14():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 5) * 3, torch.randint(0, 5, (8,))
    y[0] = logits[0].argmax()  # the true class is the most likely one ...
    y[1] = logits[1].argmin()  # ... and the least likely one
    assert torch.allclose(mart_binary_cross_entropy(logits, y).double(), reference_bce(logits, y), rtol=1e-5, atol=1e-5)
    # where the runner-up is nearly certain the official code's 1.0001 would cap the loss; Eq. 14 does not
    confident = torch.tensor([[0.0, 30.0, 0.0]])
    assert mart_binary_cross_entropy(confident, torch.tensor([0])).item() > 50


@pytest.mark.parametrize("lam", [1.0, 6.0])
def test_mart_loss_and_its_gradients_match_equation_15(lam):
    torch.manual_seed(1)
    clean = (torch.randn(6, 4) * 2).requires_grad_()
    adversarial = (torch.randn(6, 4) * 2).requires_grad_()
    y = torch.randint(0, 4, (6,))
    ours = mart_loss(clean, adversarial, y, lam)
    ours_grads = torch.autograd.grad(ours, (clean, adversarial))
    reference = reference_mart(clean, adversarial, y, lam)
    reference_grads = torch.autograd.grad(reference, (clean, adversarial))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    for a, b in zip(ours_grads, reference_grads):  # the confidence weight 1 - f_y(x) is differentiated too
        assert torch.allclose(a.double(), b.double(), atol=1e-5)
    # the KL term points from clean to adversarial: swapping the two changes the loss
    swapped = reference_bce(adversarial, y).mean() + lam * (
        (torch.softmax(adversarial.double(), 1) * (torch.log_softmax(adversarial.double(), 1)
                                                    - torch.log_softmax(clean.double(), 1))).sum(1)
        * (1 - torch.softmax(clean.double(), 1)[torch.arange(6), y])).mean()
    assert abs(ours.item() - swapped.item()) > 1e-3


def test_training_step_attacks_cross_entropy_then_eq_15(digits):
    torch.manual_seed(0)
    module = MART(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=3, lam=6.0)
    attack = module.train_attack
    assert (attack.loss, attack.init_std, attack.keep_best, attack.bn_mode) == ("ce", 0.001, False, "eval")
    x, y = next(iter(digits.train_dataloader()))
    loss, result = step_and_attack(module, (x, y))
    with torch.no_grad():
        expected = reference_mart(module.model(x), module.model(result.x_adv), y, 6.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
