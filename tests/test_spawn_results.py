"""Under ddp_spawn (two CPU processes, gloo) the callbacks' states come back from the spawned processes, so that
a later test logs what they recorded during fit (without :func:`keep_callback_states` they would not: Lightning
sends back only the weights, the trainer's state and ``callback_metrics``)."""

import os

import torch
from pytorch_lightning import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.callbacks import RobustEarlyStopping, RobustOverfitting
from lit_robust.cli.spawn_results import CallbackStatesLauncher, keep_callback_states
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT

# not from tests.helpers: the spawned processes import this module
SMALL = dict(epsilon=0.1, step_size=0.025, train_steps=1, val_steps=1, val_restarts=1, test_steps=1, test_restarts=1,
             test_on_train=False)


def test_callback_states_come_back_from_spawned_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    stopping = RobustEarlyStopping(every_n_epochs=1, steps=1, restarts=1, dirpath=str(tmp_path))
    overfitting = RobustOverfitting()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, limit_train_batches=2,
                      limit_val_batches=1, limit_test_batches=1, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      inference_mode=False, callbacks=[stopping, overfitting], default_root_dir=str(tmp_path))
    keep_callback_states(trainer)
    assert isinstance(trainer.strategy.launcher, CallbackStatesLauncher)
    torch.manual_seed(0)
    module = PGDAT(SmallCNN(width=4), **SMALL)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    # this process's callbacks hold what the spawned process 0 recorded
    assert stopping.best_epoch in (0, 1) and os.path.isfile(stopping.best_model_path)
    assert stopping.best_value == float(trainer.callback_metrics["early_stopping/best_rerr"])
    assert sorted(overfitting.val_rloss) == [0, 1]
    assert overfitting.val_rloss[1] == float(trainer.callback_metrics["val/rloss"])
    # a test with these callbacks (in one process here, to spare a second spawn) logs what they recorded
    tester = Trainer(accelerator="cpu", devices=1, limit_test_batches=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, inference_mode=False, callbacks=[stopping, overfitting])
    tester.test(module, dataloaders=loader, verbose=False)
    assert float(tester.callback_metrics["early_stopping/best_epoch"]) == stopping.best_epoch
    assert float(tester.callback_metrics["robust_overfitting/final_rloss"]) == overfitting.val_rloss[1]


def test_a_trainer_that_does_not_spawn_is_left_alone():
    trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    launcher = trainer.strategy.launcher
    keep_callback_states(trainer)
    assert trainer.strategy.launcher is launcher
