"""FastAT trains on one FGSM step from a random start (Wong et al. 2020); StandardTraining on clean inputs."""

import pytest
import torch
import torch.nn.functional as F

from lit_robust.attacks import FGSM
from lit_robust.models import SmallCNN
from lit_robust.modules import FastAT, StandardTraining
from tests.helpers import step_and_attack


def test_fast_at_step_is_cross_entropy_on_one_fgsm_step(digits):
    torch.manual_seed(0)
    module = FastAT(SmallCNN(width=8), epsilon=0.1)
    attack = module.train_attack
    assert isinstance(attack, FGSM) and attack.steps == 1 and attack.random_start
    assert attack.step_size == pytest.approx(1.25 * 0.1)
    x, y = next(iter(digits.train_dataloader()))
    loss, result = step_and_attack(module, (x, y))
    x_adv = result.x_adv
    delta = x_adv - x
    assert delta.abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # a step of 1.25 epsilon from a uniform start leaves many coordinates on the boundary of the ball
    assert ((delta.abs() > 0.1 - 1e-6) | (x_adv == 0) | (x_adv == 1)).float().mean() > 0.5
    with torch.no_grad():
        assert loss.item() == pytest.approx(F.cross_entropy(module.model(x_adv), y).item(), rel=1e-5)


def test_standard_training_step_is_clean_cross_entropy(digits):
    torch.manual_seed(0)
    module = StandardTraining(SmallCNN(width=8), epsilon=0.1)
    assert module.train_attack is None
    module.train()
    logged = {}
    module.log_dict = lambda values, **k: logged.update(values)
    x, y = next(iter(digits.train_dataloader()))
    outputs = module.training_step((x, y), 0)
    module.log_training(outputs)  # what on_train_batch_end does
    loss = outputs["loss"]
    with torch.no_grad():
        logits = module.model(x)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert logged["train/err"].item() == pytest.approx((logits.argmax(1) != y).float().mean().item())
    assert "train/rerr" not in logged  # no adversarial examples in training
