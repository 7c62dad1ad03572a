"""Every shipped digits config runs through train.py (fast_dev_run); the DDP trainer config too.

Vision configs (configs/cifar10, cifar100, svhn, mnist) are smoke-tested with tiny on-disk data
sets in tests/test_configs_vision.py.
"""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, run_train

DIGITS_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "digits", "*.yaml")))
FAST = ["--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu",
        "--model.init_args.test_steps", "2", "--model.init_args.test_restarts", "1",
        "--model.init_args.val_restarts", "1"]


def extra_arguments(config, tmp_path):
    """Arguments a config needs from the user (a pseudo-labelled data file, teacher checkpoints, HAT's
    standard network)."""
    text = open(config).read()
    if "lit_robust.modules.KDSWA" in text:
        import torch

        from lit_robust.models import SmallCNN
        from lit_robust.modules import PGDAT

        path = str(tmp_path / "teacher.ckpt")
        torch.save({"state_dict": PGDAT(SmallCNN(activation="relu")).state_dict()}, path)
        return ["--model.init_args.robust_teacher", path, "--model.init_args.standard_teacher", path]
    if "modules.HAT" in text:  # an untrained standard network, used as it is
        return ["--model.init_args.standard_checkpoint", "null",
                "--model.init_args.standard_model", "lit_robust.models.SmallCNN"]
    if "PseudoLabeledDataModule" not in text:
        return []
    path = tmp_path / "pseudo.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, 64).astype(np.int64))
    return ["--data.init_args.pseudo_labeled_path", str(path)]


def test_there_are_digits_configs():
    assert os.path.join(ROOT, "configs", "digits", "at.yaml") in DIGITS_CONFIGS


def stack(config):
    """``config`` alone when it is a full recipe (it names the network), else after the AT recipe."""
    if "class_path: lit_robust.models." in open(config).read():
        return ["--config", config]
    return ["--config", os.path.join(ROOT, "configs", "digits", "at.yaml"), "--config", config]


@pytest.mark.parametrize("config", DIGITS_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_digits_config_runs(config, tmp_path):
    code = run_train(["fit"] + stack(config) + FAST + extra_arguments(config, tmp_path), cwd=str(tmp_path))
    assert code == 0


def test_cpu_ddp_config_runs_two_processes(tmp_path):
    """A DDP fit with 2 CPU processes (gloo), through train.py as a user runs it."""
    command = [sys.executable, os.path.join(ROOT, "train.py"), "fit",
               "--config", os.path.join(ROOT, "configs", "digits", "at.yaml"),
               "--config", os.path.join(ROOT, "configs", "trainer", "cpu_ddp.yaml"),
               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
               "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
               "--model.init_args.test_steps", "2", "--model.init_args.test_restarts", "1"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 1" in output or "world_size=2" in output.replace(" ", "") or "distributed_backend=gloo" in output
    assert (tmp_path / "logs" / "digits_at" / "version_0" / "metrics.json").exists()


SETTINGS = sorted(glob.glob(os.path.join(ROOT, "configs", "digits", "settings", "*.yaml")))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_digits_setting_runs_after_the_at_recipe(setting, tmp_path):
    at = os.path.join(ROOT, "configs", "digits", "at.yaml")
    assert run_train(["fit", "--config", at, "--config", setting] + FAST, cwd=str(tmp_path)) == 0
