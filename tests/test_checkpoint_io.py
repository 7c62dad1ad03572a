"""Checkpoints are written atomically: a failure in the middle of a write (a full disk) leaves neither a
partial file nor a changed earlier checkpoint, and train.py ends with one error line."""

import os

import pytest
import torch
from lightning_fabric.plugins.io import torch_io

from lit_robust.cli.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from tests.conftest import ROOT, run_train

CONFIG = os.path.join(ROOT, "configs", "digits", "at.yaml")


def disk_full_halfway(checkpoint, path):
    """Write half of the serialised checkpoint to ``path``, then fail as a full disk does."""
    with open(path, "wb") as f:
        f.write(b"\x00" * 100)
    raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_the_earlier_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    monkeypatch.setattr(torch_io, "_atomic_save", disk_full_halfway)
    with pytest.raises(CheckpointWriteError, match="last.ckpt could not be written.*No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))


def test_train_py_ends_with_one_line_when_the_disk_is_full(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch_io, "_atomic_save", disk_full_halfway)
    code = run_train(["fit", "--config", CONFIG, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                      "--trainer.limit_val_batches", "1", "--model.init_args.model.init_args.width", "4",
                      "--model.init_args.train_steps", "1", "--model.init_args.val_steps", "1",
                      "--trainer.enable_progress_bar", "false"], cwd=str(tmp_path))
    err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in err and len(messages) == 1, err
    assert "No space left on device" in messages[0]
    written = [name for _, _, files in os.walk(tmp_path / "logs") for name in files]
    assert not [name for name in written if ".ckpt" in name], written
