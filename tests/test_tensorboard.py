"""What TensorBoard shows of train.py's runs, read by TensorBoard's own plugins: one HPARAMS row per run with the
configuration in readable values and the test results, no hp_metric, flatness per epoch in the demo recipe; the
hyper-parameters' readable values."""

import functools
import glob
import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from lit_robust.callbacks.hparams_session import flatten, readable
from lit_robust.models import SmallCNNFC
from tests.conftest import ROOT, run_train
from tests.tensorboard_tabs import hparams_rows

CONFIG = os.path.join(ROOT, "configs", "digits", "at.yaml")
FLATNESS = os.path.join(ROOT, "configs", "digits", "settings", "flatness.yaml")  # with CONFIG: make demo
# make demo's recipe, two epochs of two batches; its flatness on test on 8 examples with 2 samples and PGD-2
TINY = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
        "--model.init_args.test_steps", "2", "--model.init_args.test_restarts", "1",
        "--trainer.callbacks.init_args.test.examples", "8", "--trainer.callbacks.init_args.test.samples", "2",
        "--trainer.callbacks.init_args.test.pgd_steps", "2", "--trainer.callbacks.init_args.test.pgd_restarts", "1"]


def events(run_dir):
    """Every summary value written in ``run_dir`` as (tag, step), in the order written."""
    written = []
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            written += [(value.tag, event.step) for value in event.summary.value]
    return written


def test_two_runs_are_two_hparams_rows_with_their_learning_rate_and_test_results(tmp_path):
    every_step = ["--model.init_args.log_every_step", "true", "--trainer.log_every_n_steps", "1"]
    for lr, extra in ((0.05, []), (0.02, every_step)):
        args = ["fit", "--config", CONFIG, "--config", FLATNESS] + TINY + ["--optimizer.init_args.lr", str(lr)] + extra
        assert run_train(args, cwd=str(tmp_path)) == 0
    logs = tmp_path / "logs" / "digits_at"
    rows = hparams_rows(logs)
    assert sorted(rows) == ["version_0", "version_1"]
    for version, lr in (("version_0", 0.05), ("version_1", 0.02)):
        row, metrics = rows[version], json.load(open(logs / version / "metrics.json"))
        hparams = row["hparams"]
        assert hparams["optimizer/lr"] == pytest.approx(lr)
        assert hparams["optimizer"] == "torch.optim.SGD" and hparams["lr_scheduler/milestones"] == "[25, 124]"
        assert hparams["model"] == "lit_robust.modules.PGDAT"
        assert hparams["model/model"] == "lit_robust.models.SmallCNNFC"
        assert hparams["model/epsilon"] == pytest.approx(0.2) and hparams["model/train_steps"] == 7
        assert hparams["data/train_size"] == 200 and hparams["seed_everything"] == 0
        assert hparams["trainer/max_epochs"] == 2 and hparams["model/model/activation_kwargs"] == "None"
        assert hparams["model/autoattack"] == "False" and hparams["model/test_on_train"] == "True"
        assert hparams["callbacks"] == "[RobustOverfitting, FlatnessMonitor]"
        assert not [value for value in hparams.values() if isinstance(value, str) and " at 0x" in value]
        for tag in ("test/err", "test/rerr_pgd", "test/rloss_pgd", "test/rerr_pgd_train", "robust_overfitting/rise",
                    "robust_overfitting/best_epoch", "robust_overfitting/best_flatness", "flatness/avg_rloss"):
            assert row["metrics"][tag] == pytest.approx(metrics[tag]), tag
        assert "hp_metric" not in row["metrics"]

        written = events(str(logs / version))
        assert [tag for tag, _ in written].count("_hparams_/session_start_info") == 1  # one session, at the start
        assert [tag for tag, _ in written].index("_hparams_/session_start_info") < [
            tag for tag, _ in written].index("val/rloss")
        assert not [tag for tag, _ in written if tag == "hp_metric"]
        assert [step for tag, step in written if tag == "test/rerr_pgd"] == [4]  # once, at the trained step
        measured = [step for tag, step in written if tag == "flatness/avg_rloss"]
        assert measured == [3, 4]  # the demo's flatness every 2nd epoch (epoch 1, step 3), then on test
        steps = [tag for tag, _ in written if tag.startswith("train_step/")]
        assert bool(steps) == (version == "version_1")  # only with log_every_step


def test_hyperparameters_are_readable_text():
    partial = functools.partial(torch.optim.SGD, lr=0.1)
    nest = {"optimizer": partial, "milestones": [25, 124], "none": None, "flag": True, "rate": 0.5, "name": "relu",
            "factory": SmallCNNFC, "function": torch.nn.functional.relu, "network": {"class_path": "a.B",
                                                                                  "init_args": {"width": 4}}}
    assert readable(flatten(nest)) == {
        "optimizer": "torch.optim.sgd.SGD(lr=0.1)", "milestones": "[25, 124]", "none": "None", "flag": "True",
        "rate": 0.5, "name": "relu", "factory": "lit_robust.models.small_cnn_fc.SmallCNNFC",
        "function": "torch.nn.functional.relu", "network": "a.B", "network/width": 4}
