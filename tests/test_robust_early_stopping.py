"""RobustEarlyStopping, asserted inside Lightning's hooks: its held-out RErr equals one written out over the
whole held-out split; it reuses the module's val/rerr when the attacks agree (no second attack) and
attacks itself otherwise; every N epochs; best epoch, checkpoint, patience and restored weights follow a
scripted sequence of robust errors; its state survives a checkpoint."""

import pytest
import torch
from pytorch_lightning import Callback, LightningModule
from pytorch_lightning.callbacks import ModelCheckpoint

import lit_robust.callbacks.robust_early_stopping as robust_early_stopping
from lit_robust.attacks import PGD
from lit_robust.callbacks import RobustEarlyStopping
from lit_robust.data import DigitsDataModule
from lit_robust.errors import ConfigurationError
from lit_robust.modules import PGDAT
from tests.helpers import close, snapshot, tiny_pgdat, tiny_trainer


class CountAttacks:
    """Counts the callback's own attacks on validation batches."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = robust_early_stopping.clean_and_robust

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(robust_early_stopping, "clean_and_robust", counted)


class WrittenOut(Callback):
    """After the early-stopping callback, recomputes RErr over the whole held-out split in one batch:
    misclassified or misclassified after PGD without random start (so that it is reproducible)."""

    def __init__(self, stopping):
        self.stopping = stopping
        self.evaluated = []

    def setup(self, trainer, pl_module, stage):
        self.stopping.attack.random_start = False

    def on_validation_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.stopping.every_n_epochs:
            return
        x, y = (torch.cat(t) for t in zip(*trainer.datamodule.val_dataloader()))
        attack = PGD(0.1, 0.05, 3, restarts=2, random_start=False)
        with torch.no_grad():
            clean_wrong = pl_module.model(x).argmax(1) != y
        adversarial_wrong = pl_module.model(attack(pl_module.model, x, y)).argmax(1) != y
        expected = (clean_wrong | adversarial_wrong).float().mean().item()
        assert trainer.callback_metrics["early_stopping/rerr"].item() == pytest.approx(expected, abs=1e-6)
        self.evaluated.append(trainer.current_epoch)


def test_own_attack_every_n_epochs_matches_written_out_rerr(digits, tmp_path, monkeypatch):
    counter = CountAttacks(monkeypatch)
    stopping = RobustEarlyStopping(every_n_epochs=2, steps=3, restarts=2, step_size=0.05, dirpath=str(tmp_path))
    written_out = WrittenOut(stopping)
    trainer = tiny_trainer([stopping, written_out], max_epochs=4, limit_val_batches=None)
    digits.eval_batch_size = 16  # several held-out batches, summed by the callback
    trainer.fit(tiny_pgdat(), datamodule=digits)
    assert not stopping.reuse_validation
    assert written_out.evaluated == [1, 3]
    assert counter.calls == 2 * 64 // 16


class ScriptedRobustError(PGDAT):
    """Reports a scripted held-out robust error per epoch (through val/rerr) instead of attacking."""

    script = [0.6, 0.3, 0.4, 0.35, 0.5, 0.2]

    def validation_step(self, batch, batch_idx):
        self.log("val/rerr", self.script[self.current_epoch])


class Watch(Callback):
    """Records the weights validation saw and checks the logged early-stopping metrics each epoch."""

    def __init__(self):
        self.weights = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        self.weights[trainer.current_epoch] = snapshot(pl_module)

    def on_validation_end(self, trainer, pl_module):
        epoch = trainer.current_epoch
        metrics = trainer.callback_metrics
        assert metrics["early_stopping/rerr"].item() == pytest.approx(ScriptedRobustError.script[epoch])
        best = min(range(epoch + 1), key=lambda e: ScriptedRobustError.script[e])
        assert metrics["early_stopping/best_epoch"].item() == best
        assert metrics["early_stopping/best_rerr"].item() == pytest.approx(ScriptedRobustError.script[best])


def test_reuses_val_rerr_keeps_best_stops_with_patience_and_restores(digits, tmp_path, monkeypatch):
    counter = CountAttacks(monkeypatch)
    stopping = RobustEarlyStopping(every_n_epochs=1, steps=1, restarts=1, patience=2, restore_best_weights=True,
                                   dirpath=str(tmp_path))
    watch = Watch()
    trainer = tiny_trainer([stopping, watch], max_epochs=6)
    module = tiny_pgdat(ScriptedRobustError)
    trainer.fit(module, datamodule=digits)

    assert stopping.reuse_validation and counter.calls == 0  # the module's validation attack is this attack
    assert trainer.current_epoch == 4  # 0.4 and 0.35 after the best 0.3 of epoch 1: stopped after epoch 3
    assert (stopping.best_epoch, stopping.wait_count) == (1, 2) and stopping.best_value == pytest.approx(0.3)
    saved = torch.load(tmp_path / "early_stopping.ckpt", weights_only=True)
    assert close(saved["state_dict"], watch.weights[1])
    assert close(snapshot(module), watch.weights[1])  # restored at the end of fit
    assert not close(watch.weights[3], watch.weights[1])

    trainer.test(module, datamodule=digits, verbose=False)
    assert trainer.callback_metrics["early_stopping/best_epoch"].item() == 1


def test_state_round_trip_and_key_from_settings():
    stopping = RobustEarlyStopping(patience=3)
    stopping.best_value, stopping.best_epoch, stopping.wait_count, stopping.best_model_path = 0.25, 9, 1, "a.ckpt"
    restored = RobustEarlyStopping(patience=3)
    restored.load_state_dict(stopping.state_dict())
    assert restored.state_dict() == stopping.state_dict()
    assert RobustEarlyStopping(steps=7).state_key != RobustEarlyStopping(steps=10).state_key


@pytest.mark.parametrize("arguments", [{"every_n_epochs": 0}, {"steps": 0}, {"restarts": 0}, {"epsilon": -0.1},
                                       {"step_size": 0.0}, {"patience": 0}, {"norm": "l3"}])
def test_bad_arguments_are_refused(arguments):
    with pytest.raises(ConfigurationError, match=next(iter(arguments))):
        RobustEarlyStopping(**arguments)


def test_module_without_attack_needs_epsilon():
    with pytest.raises(ConfigurationError, match="epsilon"):
        RobustEarlyStopping().setup(tiny_trainer([]), LightningModule(), "fit")


class ScriptedRobustLoss(PGDAT):
    """Reports a scripted held-out robust loss per epoch (val/rloss) and a constant robust error."""

    script = [0.9, 0.3, 0.7, 0.4, 0.6, 0.8]

    def validation_step(self, batch, batch_idx):
        self.log_dict({"val/rloss": self.script[self.current_epoch], "val/rerr": 0.5})


def _rloss_run(tmp_path, max_epochs, ckpt_path=None):
    stopping = RobustEarlyStopping(monitor="rloss", every_n_epochs=1, steps=1, restarts=1, dirpath=str(tmp_path))
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path), save_last=True)
    trainer = tiny_trainer([stopping, checkpoint], max_epochs=max_epochs, enable_checkpointing=True)
    trainer.fit(tiny_pgdat(ScriptedRobustLoss), datamodule=DigitsDataModule(
        held_out_size=16, eval_size=16, train_eval_size=16, batch_size=16, eval_batch_size=16), ckpt_path=ckpt_path)
    return stopping, trainer


def test_rloss_monitor_follows_val_rloss_and_resumes(tmp_path):
    reference, trainer = _rloss_run(tmp_path / "uninterrupted", 6)
    assert reference.reuse_validation
    assert (reference.best_epoch, reference.wait_count) == (1, 4)  # the loss, not the constant error, decides
    assert reference.best_value == pytest.approx(0.3)
    assert trainer.callback_metrics["early_stopping/rloss"].item() == pytest.approx(0.8)
    assert trainer.callback_metrics["early_stopping/best_rloss"].item() == pytest.approx(0.3)
    assert trainer.callback_metrics["early_stopping/best_epoch_rloss"].item() == 1
    assert "early_stopping/best_rerr" not in trainer.callback_metrics
    assert "early_stopping/best_epoch" not in trainer.callback_metrics

    _rloss_run(tmp_path / "interrupted", 3)  # stops after epoch 2, as a killed run's last checkpoint
    resumed, _ = _rloss_run(tmp_path / "interrupted", 6, ckpt_path=str(tmp_path / "interrupted" / "last.ckpt"))
    # without the restored state the resumed run would pick epoch 3 (0.4) with 2 evaluations waited
    assert resumed.state_dict() == reference.state_dict() | {"best_model_path": resumed.best_model_path}
    assert resumed.best_epoch == 1 and resumed.wait_count == 4
    assert RobustEarlyStopping(monitor="rloss").state_key != RobustEarlyStopping().state_key


def test_own_attack_rloss_matches_written_out_loss(digits, tmp_path):
    stopping = RobustEarlyStopping(monitor="rloss", every_n_epochs=1, steps=3, restarts=1, step_size=0.05,
                                   dirpath=str(tmp_path))
    seen = []

    class WrittenOutLoss(Callback):
        def setup(self, trainer, pl_module, stage):
            stopping.attack.random_start = False

        def on_validation_end(self, trainer, pl_module):
            x, y = (torch.cat(t) for t in zip(*trainer.datamodule.val_dataloader()))
            attack = PGD(0.1, 0.05, 3, random_start=False)
            with torch.no_grad():
                expected = torch.nn.functional.cross_entropy(pl_module.model(attack(pl_module.model, x, y)), y)
            seen.append(trainer.callback_metrics["early_stopping/rloss"].item())
            assert seen[-1] == pytest.approx(expected.item(), rel=1e-5)

    trainer = tiny_trainer([stopping, WrittenOutLoss()], max_epochs=1, limit_val_batches=None)
    digits.eval_batch_size = 32
    trainer.fit(tiny_pgdat(), datamodule=digits)
    assert not stopping.reuse_validation and len(seen) == 1


def test_bad_monitor_is_refused():
    with pytest.raises(ConfigurationError, match="monitor"):
        RobustEarlyStopping(monitor="err")
