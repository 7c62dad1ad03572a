"""bf16 mixed precision on the CPU, attacks included (the perturbation stays in fp32), and channels_last."""

import json
import logging
import math

import torch
import torch.nn.functional as F
from pytorch_lightning import Trainer

from lit_robust.attacks import PGD
from lit_robust.attacks.evaluation import autoattack_wrong
from lit_robust.callbacks import MetricsFile
from lit_robust.data import CIFAR10DataModule
from lit_robust.models import ResNet18
from lit_robust.modules import PGDAT
from tests.fakedata import write_cifar10


def test_pgd_under_bf16_autocast_keeps_the_perturbation_in_fp32():
    torch.manual_seed(0)
    model = ResNet18(width=4, channels_last=True).eval()
    inputs, outputs = [], []

    def record(module, args, output):
        inputs.append(args[0].dtype)
        outputs.append(output.dtype)

    model.register_forward_hook(record)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    attack = PGD(8 / 255, 2 / 255, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = attack.run(model, x, y)
        clean_loss = F.cross_entropy(model(x).float(), y, reduction="none")
    assert set(inputs) == {torch.float32} and set(outputs) == {torch.bfloat16}
    assert result.x_adv.dtype == torch.float32 and result.loss.dtype == torch.float32
    assert (result.x_adv - x).abs().max() <= 8 / 255 + 1e-7
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.loss.mean() > clean_loss.mean()


def breakable_model() -> torch.nn.Module:
    """A linear classifier with large weights: every example is broken within epsilon 8/255 at once,
    so AutoAttack stops after its first attack and the test stays fast."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    torch.nn.init.normal_(model[1].weight, std=0.1)
    return model


def test_autoattack_runs_in_fp32_under_autocast_and_reports_progress(caplog):
    model = breakable_model()
    x = torch.rand(4, 3, 32, 32)
    y = model(x).argmax(dim=1)
    y[3] = (y[3] + 1) % 10  # one example misclassified from the start
    reference = autoattack_wrong(model, x, y, 8 / 255, batch_size=4)
    with caplog.at_level(logging.INFO), torch.autocast("cpu", dtype=torch.bfloat16):
        wrong = autoattack_wrong(model, x, y, 8 / 255, batch_size=2)
    assert torch.equal(wrong, reference) and bool(wrong.all())
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AutoAttack (standard):")]
    assert len(progress) == 3  # one batch of 4 for the reference, two batches of 2
    assert "2/4 examples, 2 misclassified" in progress[1] and "4/4 examples, 4 misclassified" in progress[2]


def test_autoattack_in_test_under_bf16_mixed(tmp_path, monkeypatch):
    """train.py's test protocol with AutoAttack (test/rerr_aa) runs under bf16-mixed."""
    root = write_cifar10(tmp_path / "data", monkeypatch, train_size=8, test_size=8)
    data = CIFAR10DataModule(root, held_out_size=2, eval_size=4, train_eval_size=2, num_workers=0)
    module = PGDAT(breakable_model(), test_steps=2, test_restarts=1, test_on_train=False, autoattack=True)
    trainer = Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", inference_mode=False, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.test(module, datamodule=data, verbose=False)
    assert float(trainer.callback_metrics["test/rerr_aa"]) == 1.0


def test_bf16_mixed_training_validation_and_test(tmp_path, monkeypatch):
    """Trainer(precision="bf16-mixed") on the CPU: PGD-AT steps, PGD validation and test, channels_last."""
    torch.manual_seed(0)
    root = write_cifar10(tmp_path / "data", monkeypatch, train_size=8, test_size=8)
    data = CIFAR10DataModule(root, held_out_size=4, eval_size=4, train_eval_size=4, batch_size=8, num_workers=0)
    module = PGDAT(ResNet18(width=4, channels_last=True), epsilon=8 / 255, step_size=2 / 255, train_steps=2,
                   val_steps=2, val_restarts=1, test_steps=2, test_restarts=1)
    trainer = Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_epochs=1, inference_mode=False,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[MetricsFile()])
    trainer.fit(module, datamodule=data)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert 0 <= float(trainer.callback_metrics["val/rerr"]) <= 1
    trainer.test(module, datamodule=data, verbose=False)
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    for name in ("test/err", "test/rerr_pgd", "test/rloss_pgd", "test/rerr_pgd_train"):
        assert math.isfinite(metrics[name])
    assert metrics["test/rerr_pgd"] >= metrics["test/err"]
    convolutions = [m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    assert all(p.dtype == torch.float32 for p in module.parameters())
