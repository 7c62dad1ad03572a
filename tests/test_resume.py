"""Crash and resume: PGDAT with every callback on, killed in epochs 1 and 3 and resumed from the last
checkpoint, ends where an uninterrupted run ends (same seed, deterministic mode): weights, averaged
weights, early-stopping state and learning-rate schedule. Checkpoints load with weights_only=True."""

import functools

import pytest
import torch
from pytorch_lightning import Callback, Trainer, seed_everything
from pytorch_lightning.callbacks import ModelCheckpoint

from lit_robust.callbacks import RobustEarlyStopping, WeightAveraging, WeightClipping
from lit_robust.data import DigitsDataModule
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT

MAX_EPOCHS = 5


class Killed(Exception):
    """Stands for the process being killed."""


class Crash(Callback):
    """Kills training in the middle of epoch ``epoch`` (as a SIGKILL would, the epoch's work is lost)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            raise Killed(f"crash in epoch {self.epoch}")


def _train(tmp_path, ckpt_path=None, crash_epoch=None, weights_only=None):
    seed_everything(0)
    module = PGDAT(SmallCNN(width=8), optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                   lr_scheduler=functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[2, 4], gamma=0.1),
                   epsilon=0.1, step_size=0.05, train_steps=2, val_steps=2, val_restarts=1)
    data = DigitsDataModule(held_out_size=32, eval_size=32, train_eval_size=32, batch_size=32, eval_batch_size=32)
    averaging = WeightAveraging(decay=0.9)
    stopping = RobustEarlyStopping(every_n_epochs=1, steps=2, restarts=2, patience=10, dirpath=str(tmp_path))
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path), save_last=True)
    callbacks = [averaging, WeightClipping(max_value=0.3), stopping, checkpoint]
    if crash_epoch is not None:
        callbacks.append(Crash(crash_epoch))
    trainer = Trainer(max_epochs=MAX_EPOCHS, limit_train_batches=6, limit_val_batches=1, accelerator="cpu",
                      deterministic=True, inference_mode=False, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=weights_only)
    return trainer, module, averaging, stopping


def _state(directory, trainer, module, averaging, stopping):
    """What the run ends with: its final weights (the averaged ones, copied in at the end of fit) and its
    last checkpoint, which also holds the current weights, the optimizer and the schedule."""
    last = torch.load(directory / "last.ckpt", map_location="cpu", weights_only=True)
    return {
        "weights": {k: v.clone() for k, v in module.state_dict().items()},
        "checkpoint averaged": last["state_dict"],
        "checkpoint current": last["current_model_state"],
        "momentum": {str(k): v["momentum_buffer"] for k, v in last["optimizer_states"][0]["state"].items()},
        "early_stopping": stopping.state_dict(),
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
        "global_step": trainer.global_step,
    }


def test_crash_in_epochs_1_and_3_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    reference = _state(tmp_path / "uninterrupted", *_train(tmp_path / "uninterrupted"))
    assert reference["global_step"] == MAX_EPOCHS * 6
    assert reference["lr"] == pytest.approx(0.05 * 0.01)

    directory = tmp_path / "interrupted"
    with pytest.raises(Killed, match="epoch 1"):
        _train(directory, crash_epoch=1)
    assert torch.load(directory / "last.ckpt", weights_only=True)["epoch"] == 0  # saved at the end of epoch 0
    with pytest.raises(Killed, match="epoch 3"):
        _train(directory, ckpt_path=str(directory / "last.ckpt"), crash_epoch=3, weights_only=True)
    resumed = _state(directory, *_train(directory, ckpt_path=str(directory / "last.ckpt"), weights_only=True))
    assert "random_states" in torch.load(directory / "early_stopping.ckpt", weights_only=True)

    assert resumed["global_step"] == reference["global_step"]
    assert resumed["lr"] == pytest.approx(reference["lr"]) and resumed["scheduler"] == reference["scheduler"]
    assert resumed["early_stopping"]["best_epoch"] == reference["early_stopping"]["best_epoch"]
    assert resumed["early_stopping"]["wait_count"] == reference["early_stopping"]["wait_count"]
    assert resumed["early_stopping"]["best_rerr"] == pytest.approx(reference["early_stopping"]["best_rerr"])
    for kind in ("weights", "checkpoint averaged", "checkpoint current", "momentum"):
        assert resumed[kind].keys() == reference[kind].keys()
        for name, value in reference[kind].items():
            assert torch.allclose(resumed[kind][name].float(), value.float(), atol=1e-6), (kind, name)
    # the averaged weights differ from the current ones, so both comparisons mean something
    assert any(not torch.allclose(v, reference["checkpoint current"][k])
               for k, v in reference["checkpoint averaged"].items() if v.is_floating_point())
