"""TRADES: the loss (Stutz et al. 2021, supplement Eq. 13) against a reference written from the equation; the
training step."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_robust.models import SmallCNN
from lit_robust.modules import TRADES
from lit_robust.modules.losses import trades_loss
from tests.helpers import step_and_attack


def reference_trades(clean_logits, adversarial_logits, y, lam):
    """(1/B) sum_i [-log p_{y_i}(x_i) + lam * sum_k p_k(x_i) log(p_k(x_i) / p_k(x_adv_i))], in float64 loops."""
    total = 0.0
    for z, z_adv, label in zip(clean_logits.tolist(), adversarial_logits.tolist(), y.tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
        q = [math.exp(v) / sum(math.exp(u) for u in z_adv) for v in z_adv]
        total += -math.log(p[label]) + lam * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
    return total / len(y)


@pytest.mark.parametrize("lam", [1.0, 3.0, 6.0, 9.0])
def test_trades_loss_matches_equation_13(lam):
    torch.manual_seed(0)
    clean, adversarial, y = torch.randn(5, 4) * 2, torch.randn(5, 4) * 2, torch.randint(0, 4, (5,))
    assert trades_loss(clean, adversarial, y, lam).item() == pytest.approx(reference_trades(clean, adversarial, y, lam),
                                                                          rel=1e-5)
    assert trades_loss(clean, clean, y, lam).item() == pytest.approx(F.cross_entropy(clean, y).item(), rel=1e-6)


def test_training_step_attacks_kl_in_eval_mode_then_eq_13(digits):
    torch.manual_seed(0)
    module = TRADES(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=3, lam=6.0)
    attack = module.train_attack
    assert (attack.loss, attack.init_std, attack.keep_best, attack.bn_mode) == ("kl", 0.001, False, "eval")
    x, y = next(iter(digits.train_dataloader()))
    modes = []
    module.model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    loss, result = step_and_attack(module, (x, y))
    assert modes == [False] * 4 + [True] * 2  # clean target + 3 iterations in eval, then clean + adversarial
    x_adv = result.x_adv
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    with torch.no_grad():
        expected = reference_trades(module.model(x), module.model(x_adv), y, 6.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
