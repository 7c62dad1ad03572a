"""RobustOverfitting: per-epoch held-out and training RLoss, the minimum, the rise and the learning-rate
drops follow a scripted run; the numbers reach the test metrics; a TensorBoard chart is written; the
state survives a checkpoint."""

import functools
import glob

import pytest
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_robust.callbacks import RobustOverfitting
from lit_robust.errors import ConfigurationError
from lit_robust.modules import PGDAT
from tests.helpers import tiny_pgdat, tiny_trainer

SCRIPT = [2.0, 1.2, 0.8, 0.9, 1.0, 1.1]  # held-out RLoss per epoch: minimum at epoch 2, then +37.5%


class ScriptedHeldOut(PGDAT):
    def validation_step(self, batch, batch_idx):
        self.log("val/rloss", SCRIPT[self.current_epoch])


def test_summary_drops_test_metrics_and_chart(digits, tmp_path):
    overfitting = RobustOverfitting()
    trainer = tiny_trainer([overfitting], max_epochs=6, logger=TensorBoardLogger(str(tmp_path), name="run"))
    module = tiny_pgdat(ScriptedHeldOut, lr_scheduler=functools.partial(torch.optim.lr_scheduler.MultiStepLR,
                                                                       milestones=[2, 4], gamma=0.1))
    trainer.fit(module, datamodule=digits)

    assert overfitting.val_rloss == pytest.approx(dict(enumerate(SCRIPT)))
    assert sorted(overfitting.train_rloss) == list(range(6))
    assert overfitting.train_rloss[5] == pytest.approx(trainer.callback_metrics["train/rloss"].item())
    assert overfitting.lr_drops() == [2, 4]
    expected = {"best_epoch": 2.0, "best_rloss": 0.8, "final_rloss": 1.1, "rise": 1.1 / 0.8 - 1,
                "train_rloss": overfitting.train_rloss[5]}
    assert overfitting.summary() == pytest.approx(expected)

    trainer.test(module, datamodule=digits, verbose=False)
    for name, value in expected.items():
        assert trainer.callback_metrics[f"robust_overfitting/{name}"].item() == pytest.approx(value, rel=1e-5)
    tags = set()
    for path in glob.glob(str(tmp_path / "run" / "version_0" / "events*")):  # one file for fit, one for test
        events = EventAccumulator(path)
        events.Reload()
        tags |= set(events.Tags()["images"]) | set(events.Tags()["tensors"])
    assert {"robust_overfitting/rloss", "custom_scalars__config__"} <= tags


def test_state_round_trip_and_bad_threshold():
    overfitting = RobustOverfitting()
    overfitting.val_rloss, overfitting.train_rloss, overfitting.lr = {0: 1.0, 1: 0.5}, {0: 0.9}, {0: 0.1, 1: 0.01}
    restored = RobustOverfitting()
    restored.load_state_dict(overfitting.state_dict())
    assert restored.summary() == overfitting.summary() and restored.lr_drops() == [1]
    assert RobustOverfitting().summary() == {}
    with pytest.raises(ConfigurationError, match="threshold"):
        RobustOverfitting(threshold=-0.1)
