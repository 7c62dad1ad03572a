"""A non-finite training loss stops train.py at once, with one message naming the epoch, the step and the
last good checkpoint, which is kept (finite weights, nothing written after it)."""

import os
import re

import pytest
import torch

from tests.conftest import ROOT, run_train

CONFIG = os.path.join(ROOT, "configs", "digits", "at.yaml")
# the learning rate jumps to 5e36 after epoch 0: the weights overflow within a step or two of epoch 1
EXPLODE = ["--lr_scheduler.init_args.milestones", "[1]", "--lr_scheduler.init_args.gamma", "1e38",
           "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
           "--trainer.enable_progress_bar", "false", "--model.init_args.model.init_args.width", "4",
           "--model.init_args.train_steps", "1", "--model.init_args.val_steps", "1"]


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(tmp_path, capsys):
    code = run_train(["fit", "--config", CONFIG] + EXPLODE, cwd=str(tmp_path))
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    messages = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(messages) == 1, err
    match = re.search(r"non-finite training loss .* at epoch (\d+), global step (\d+);.*Last good checkpoint "
                      r"\(kept\): (\S+)\.$", messages[0])
    assert match, messages[0]
    epoch, step, path = int(match.group(1)), int(match.group(2)), match.group(3)
    assert epoch == 1 and 3 <= step < 6  # in the epoch where the learning rate exploded, not later

    checkpoint_dir = tmp_path / "logs" / "digits_at" / "version_0" / "checkpoints"
    # nothing saved after the last good one (last.ckpt is that same epoch-0 state)
    assert sorted(os.listdir(checkpoint_dir)) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert os.path.basename(path) in ("epoch=0-step=3.ckpt", "last.ckpt")
    for name in os.listdir(checkpoint_dir):
        saved = torch.load(checkpoint_dir / name, weights_only=True)
        assert saved["global_step"] == 3
        assert all(torch.isfinite(value).all() for value in saved["state_dict"].values())
    assert not (tmp_path / "logs" / "digits_at" / "version_0" / "metrics.json").exists()  # no test after a failure


def test_exploding_weights_stop_the_run_and_no_checkpoint_holds_them(tmp_path, capsys):
    code = run_train(["fit", "--config", CONFIG, "--optimizer.init_args.lr", "1e6"] + EXPLODE[4:],
                     cwd=str(tmp_path))
    err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in err and len(messages) == 1, err
    assert re.search(r"non-finite (weights|validation loss|training loss)", messages[0]), messages[0]
    run = tmp_path / "logs" / "digits_at" / "version_0"
    for path in (run / "checkpoints").glob("*.ckpt") if (run / "checkpoints").exists() else []:
        saved = torch.load(path, weights_only=True)
        assert all(torch.isfinite(value).all() for value in saved["state_dict"].values()), path
    assert not (run / "metrics.json").exists()


def test_a_checkpoint_of_non_finite_weights_is_never_written(tmp_path):
    from pytorch_lightning import Trainer

    from lit_robust.models import SmallCNN
    from lit_robust.modules import PGDAT

    module = PGDAT(SmallCNN(width=4))
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, max_epochs=0)
    trainer.strategy.connect(module)
    module.trainer = trainer
    with torch.no_grad():
        next(module.model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite weights.*no checkpoint written"):
        trainer.save_checkpoint(tmp_path / "inf.ckpt")
    assert not (tmp_path / "inf.ckpt").exists()
