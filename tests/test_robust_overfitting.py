"""RobustOverfitting: per-epoch held-out and training RLoss, flatness in the epochs it is measured, the minimum,
the rise and the learning-rate drops follow a scripted run; the numbers reach the test metrics and the summary;
the Custom Scalars layout and the chart are in TensorBoard during training; the state survives a checkpoint."""

import functools
import glob
import logging

import pytest
import torch
from pytorch_lightning import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_robust.callbacks import RobustOverfitting
from lit_robust.errors import ConfigurationError
from lit_robust.modules import PGDAT
from tests.helpers import tiny_pgdat, tiny_trainer
from tests.tensorboard_tabs import custom_scalars_layout

SCRIPT = [2.0, 1.2, 0.8, 0.9, 1.0, 1.1]  # held-out RLoss per epoch: minimum at epoch 2, then +37.5%
FLATNESS = {1: 0.1, 3: 0.3, 5: 0.5}  # flatness measured every other epoch, last before the minimum at epoch 1


class ScriptedHeldOut(PGDAT):
    def validation_step(self, batch, batch_idx):
        self.log("val/rloss", SCRIPT[self.current_epoch])
        if self.current_epoch in FLATNESS:
            self.log("flatness/avg_rloss", FLATNESS[self.current_epoch])


class WhatTensorBoardShows(Callback):
    """At the start of epoch 1: the Custom Scalars layout and the robust-overfitting image of the run so far."""

    def __init__(self, run_dir):
        self.run_dir, self.layout, self.images = run_dir, None, None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.layout = custom_scalars_layout(self.run_dir)
            events = EventAccumulator(str(self.run_dir))
            events.Reload()
            self.images = events.Tags()["images"]


def test_summary_drops_test_metrics_and_chart(digits, tmp_path, caplog):
    overfitting = RobustOverfitting(plot_every_n_epochs=1)
    shows = WhatTensorBoardShows(tmp_path / "run" / "version_0")
    trainer = tiny_trainer([overfitting, shows], max_epochs=6, logger=TensorBoardLogger(str(tmp_path), name="run"))
    module = tiny_pgdat(ScriptedHeldOut, lr_scheduler=functools.partial(torch.optim.lr_scheduler.MultiStepLR,
                                                                       milestones=[2, 4], gamma=0.1))
    with caplog.at_level(logging.INFO):
        trainer.fit(module, datamodule=digits)

    # during training, after the first epoch: the layout (held-out and training RLoss on one chart) and the chart
    charts = {chart["title"]: chart["multiline"]["tag"] for category in shows.layout["category"]
              for chart in category["chart"]}
    assert ["^val/rloss$", "^train/rloss$"] in charts.values() and ["^flatness/avg_rloss$"] in charts.values()
    assert shows.images == ["robust_overfitting/rloss"]
    assert overfitting.flatness == pytest.approx(FLATNESS)  # only the epochs measured, not the value kept after
    assert "0.1000 at the held-out minimum, 0.5000 at the end" in caplog.text

    assert overfitting.val_rloss == pytest.approx(dict(enumerate(SCRIPT)))
    assert sorted(overfitting.train_rloss) == list(range(6))
    assert overfitting.train_rloss[5] == pytest.approx(trainer.callback_metrics["train/rloss"].item())
    assert overfitting.lr_drops() == [2, 4]
    expected = {"best_epoch": 2.0, "best_rloss": 0.8, "final_rloss": 1.1, "rise": 1.1 / 0.8 - 1,
                "train_rloss": overfitting.train_rloss[5], "best_flatness": 0.1, "final_flatness": 0.5}
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
    overfitting.flatness = {1: 0.2}
    restored = RobustOverfitting()
    restored.load_state_dict(overfitting.state_dict())
    assert restored.summary() == overfitting.summary() and restored.lr_drops() == [1]
    assert RobustOverfitting().summary() == {}
    with pytest.raises(ConfigurationError, match="threshold"):
        RobustOverfitting(threshold=-0.1)
    with pytest.raises(ConfigurationError, match="plot_every_n_epochs"):
        RobustOverfitting(plot_every_n_epochs=-1)
