"""Every shipped digits config runs through train.py (fast_dev_run): the AT recipe alone, every other
recipe and setting as an overlay stacked on it (and it changes what it says it changes); the DDP
trainer config too.

Vision configs (configs/cifar10, cifar100, svhn, mnist) are smoke-tested with tiny on-disk data
sets in tests/test_configs_vision.py.
"""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, run_train

AT = os.path.join(ROOT, "configs", "digits", "at.yaml")
DIGITS_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "digits", "*.yaml")))
OVERLAYS = [config for config in DIGITS_CONFIGS if config != AT]
FAST = ["--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu",
        "--model.init_args.test_steps", "2", "--model.init_args.test_restarts", "1",
        "--model.init_args.val_restarts", "1"]


def extra_arguments(config, tmp_path):
    """Arguments a config needs from the user (a pseudo-labelled data file, teacher checkpoints, HAT's
    standard network)."""
    text = open(config).read()
    if "lit_robust.modules.KDSWA" in text:
        import torch

        from lit_robust.models import SmallCNNFC
        from lit_robust.modules import PGDAT

        path = str(tmp_path / "teacher.ckpt")  # the AT recipe's network
        torch.save({"state_dict": PGDAT(SmallCNNFC(activation="relu")).state_dict()}, path)
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
    assert AT in DIGITS_CONFIGS and len(OVERLAYS) >= 5


def stack(config):
    """``config`` alone when it is a full recipe (it names the network), else after the AT recipe."""
    if "class_path: lit_robust.models." in open(config).read():
        return ["--config", config]
    return ["--config", os.path.join(ROOT, "configs", "digits", "at.yaml"), "--config", config]


@pytest.mark.parametrize("config", DIGITS_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_digits_config_runs(config, tmp_path):
    code = run_train(["fit"] + stack(config) + FAST + extra_arguments(config, tmp_path), cwd=str(tmp_path))
    assert code == 0


def leaves(tree, prefix=()):
    """(path, value) of every leaf of a parsed YAML tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, prefix + (key,))
    else:
        yield prefix, tree


@pytest.mark.parametrize("config", OVERLAYS + sorted(glob.glob(os.path.join(ROOT, "configs", "digits", "settings",
                                                                            "*.yaml"))),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_overlay_says_only_what_differs(config):
    """An overlay repeats nothing of the AT recipe (no seed, no value the recipe already has)."""
    with open(AT) as f:
        recipe = dict(leaves(yaml.safe_load(f)))
    with open(config) as f:
        overlay = dict(leaves(yaml.safe_load(f)))
    repeated = {path: value for path, value in overlay.items() if recipe.get(path, object()) == value}
    assert not repeated, f"{os.path.relpath(config, ROOT)} repeats the AT recipe: {repeated}"
    assert "seed_everything" not in {path[0] for path in overlay}
    assert ("model", "init_args", "model", "class_path") not in overlay  # the recipe's network


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
    assert ("GLOBAL_RANK: 1" in output or "world_size=2" in output.replace(" ", "")
            or "distributed_backend=gloo" in output)
    assert (tmp_path / "logs" / "digits_at" / "version_0" / "metrics.json").exists()


SETTINGS = sorted(glob.glob(os.path.join(ROOT, "configs", "digits", "settings", "*.yaml")))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_digits_setting_runs_after_the_at_recipe(setting, tmp_path):
    assert run_train(["fit", "--config", AT, "--config", setting] + FAST, cwd=str(tmp_path)) == 0
