"""PGDAT: a training step, the paper's AT options, validation that really attacks, a user's own network."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Trainer
from torch import nn

from lit_robust.attacks import PGD
from lit_robust.callbacks import MetricsFile
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT


def _trainer(tmp_path, **kwargs):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                    enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp_path))
    defaults.update(kwargs)
    return Trainer(**defaults)


def _module(**kwargs):
    defaults = dict(epsilon=0.1, step_size=0.025, train_steps=3, val_steps=3, val_restarts=1, test_steps=3,
                    test_restarts=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    defaults.update(kwargs)
    return PGDAT(SmallCNN(width=8), **defaults)


def test_training_step_is_adversarial_cross_entropy(digits):
    torch.manual_seed(0)
    module = _module()
    module.eval()  # BN in eval mode: each example's logits depend on it alone
    x, y = next(iter(digits.train_dataloader()))
    calls = []
    original = module.train_attack.run
    module.train_attack.run = lambda *a, **k: calls.append(1) or original(*a, **k)
    module.log_dict = lambda *a, **k: None
    torch.manual_seed(1)
    loss = module.training_step((x, y), 0)["loss"]
    assert calls == [1]
    torch.manual_seed(1)
    x_adv = PGD(0.1, 0.025, 3, keep_best=False)(module.model, x, y)
    assert torch.allclose(loss, F.cross_entropy(module.model(x_adv), y), atol=1e-5)
    assert loss > F.cross_entropy(module.model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in module.model.parameters())


def test_forward_pass_count_of_pgd7_step(digits):
    module = _module(train_steps=7)
    module.log_dict = lambda *a, **k: None
    counts = {"forward": 0}
    module.model.register_forward_hook(lambda *a: counts.__setitem__("forward", counts["forward"] + 1))
    x, y = next(iter(digits.train_dataloader()))
    module.training_step((x, y), 0)
    assert counts["forward"] == 8  # 7 attack iterations + 1 for the weight update


def test_ignore_incorrect_and_label_leaking(digits):
    torch.manual_seed(0)
    module = _module(ignore_incorrect=True)
    module.eval()
    module.log_dict = lambda *a, **k: None
    x, y = next(iter(digits.train_dataloader()))
    predicted = module.clean_prediction(x)
    wrong = predicted != y
    assert wrong.any() and (~wrong).any()  # untrained: both kinds exist
    seen = {}
    original = module.outer_loss
    module.outer_loss = lambda logits, y_: seen.setdefault("logits", logits) is None or original(logits, y_)
    module.training_step((x, y), 0)
    with torch.no_grad():
        clean_logits = module.model(x)
    assert torch.allclose(seen["logits"][wrong], clean_logits[wrong], atol=1e-5)
    assert not torch.allclose(seen["logits"][~wrong], clean_logits[~wrong], atol=1e-3)

    leak = _module(prevent_label_leaking=True)
    targets = {}
    leak.train_attack.run = lambda m, x_, y_, **k: targets.setdefault("y", y_) is None or PGD.run(
        leak.train_attack, m, x_, y_, **k)
    leak.log_dict = lambda *a, **k: None
    leak.training_step((x, y), 0)
    assert torch.equal(targets["y"], leak.clean_prediction(x))


def test_label_smoothing_only_in_weight_update(digits):
    module = _module(label_smoothing=0.2)
    module.log_dict = lambda *a, **k: None
    x, y = next(iter(digits.train_dataloader()))
    targets = {}
    original = module.train_attack.run
    module.train_attack.run = lambda m, x_, y_, **k: targets.setdefault("y", y_) is None or original(m, x_, y_, **k)
    torch.manual_seed(0)
    loss = module.training_step((x, y), 0)["loss"]
    assert torch.equal(targets["y"], y)  # PGD uses the true labels
    torch.manual_seed(0)
    plain = _module(label_smoothing=0.0)
    plain.model.load_state_dict(module.model.state_dict())
    plain.log_dict = lambda *a, **k: None
    assert not torch.isclose(loss, plain.training_step((x, y), 0)["loss"])


@pytest.mark.parametrize("kwargs, setting", [
    (dict(epsilon=-0.1), "epsilon"), (dict(train_steps=0), "train_steps"), (dict(norm="l1"), "norm"),
    (dict(label_smoothing=1.5), "label_smoothing"), (dict(label_noise=-0.1), "label_noise"),
])
def test_bad_settings_fail_at_construction(kwargs, setting):
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        _module(**kwargs)


class GradientProbe(torch.nn.Module):
    """Records whether gradients were enabled, and not inference mode, when validation attacked."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.states = inner, []

    def forward(self, x):
        self.states.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(), x.requires_grad))
        return self.inner(x)


def test_validation_in_single_process_trainer_runs_pgd(digits, tmp_path):
    probe = GradientProbe(SmallCNN(width=8))
    module = PGDAT(probe, epsilon=0.1, step_size=0.025, train_steps=2, val_steps=3, val_restarts=1)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=digits)
    probe.states.clear()
    metrics = trainer.validate(module, datamodule=digits, verbose=False)[0]
    assert any(grad and not inference and requires for grad, inference, requires in probe.states)
    assert metrics["val/rerr"] >= metrics["val/err"]
    assert metrics["val/rloss"] > metrics["val/loss"]


def test_users_own_module_and_plain_trainer(tmp_path, digits):
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    module = PGDAT(Mine(), epsilon=0.1, step_size=0.025, train_steps=3, val_steps=3, val_restarts=1,
                   test_steps=5, test_restarts=2, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer = _trainer(tmp_path, max_epochs=4, callbacks=[MetricsFile()])
    trainer.fit(module, datamodule=digits)
    result = trainer.test(module, datamodule=digits, verbose=False)[0]
    assert result["test/rerr_pgd"] < 0.6  # chance is 0.9
    assert result["test/rerr_pgd"] >= result["test/err"]
    assert "test/rloss_pgd_train" in result
    metrics = json.load(open(os.path.join(str(tmp_path), "metrics.json")))
    assert metrics["test/rerr_pgd"] == pytest.approx(result["test/rerr_pgd"])


def test_train_epsilon_only_changes_the_training_attack():
    module = _module(train_epsilon=0.15)
    assert module.train_attack.epsilon == 0.15
    assert module.val_attack.epsilon == module.test_attack.epsilon == 0.1
    assert _module().train_attack.epsilon == 0.1
