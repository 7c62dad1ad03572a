"""Shared test helpers: a tiny CPU trainer, the digits data module, and running train.py in-process."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# tiny models run fastest on one thread, and CI has only two cores
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def in_temporary_directory(tmp_path, monkeypatch):
    """Every test runs in its own directory, so that whatever a Trainer writes to its working directory
    (a default root directory, metrics.json) stays out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def digits():
    """A digits data module with small splits and batches, already set up."""
    from lit_robust.data import DigitsDataModule

    dm = DigitsDataModule(held_out_size=64, eval_size=64, train_eval_size=64, batch_size=32, eval_batch_size=64)
    dm.setup("fit")
    return dm


def run_train(args, cwd):
    """Run ``train.py`` with ``args`` in-process in directory ``cwd``; returns the exit code (0 when it returns)."""
    from lit_robust.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        main(args)
    except SystemExit as exit_:
        return exit_.code
    finally:
        os.chdir(old)
    return 0
