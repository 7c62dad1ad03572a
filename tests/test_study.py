"""The study: its file names existing recipes, a one-epoch two-method mini study runs end to end and
resumes, and the report comes out of it."""

import json
import os

import pytest

from lit_robust.study import load_study, main
from tests.conftest import ROOT

STUDY = os.path.join(ROOT, "configs", "study", "digits.yaml")
TINY_COMMON = """
trainer:
  max_epochs: 1
  limit_train_batches: 2
  enable_progress_bar: false
  callbacks+:
    - class_path: callbacks.FlatnessMonitor
      init_args: {examples: 16, samples: 1, steps: 1, test_examples: 16, test_samples: 1, test_steps: 1,
                  test_restarts: 1, measures: [avg_rloss, avg_loss]}
    - class_path: callbacks.RobustEarlyStopping
      init_args: {every_n_epochs: 1, steps: 2, restarts: 1}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {save_last: true}
model:
  init_args: {val_steps: 2, val_restarts: 1, test_steps: 2, test_restarts: 1, train_steps: 2}
data:
  init_args: {eval_size: 32, held_out_size: 32, train_eval_size: 32, eval_batch_size: 32}
"""


def test_study_file_names_existing_recipes():
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        study = load_study(STUDY)
    finally:
        os.chdir(old)
    names = {run["name"] for run in study["runs"]}
    for method in ("at", "trades", "mart", "awp", "amp", "entropy_sgd", "friendly_at", "rotation",
                   "weight_averaging", "weight_clipping", "label_smoothing", "label_noise", "adam",
                   "at_seed1", "at_seed2", "at_early_stopping_rloss"):
        assert method in names
    at = os.path.join("configs", "digits", "at.yaml")
    for run in study["runs"]:  # every run is the AT recipe, possibly with overlays after it
        assert run["configs"][0] == at, run["name"]


def test_bad_study_file_is_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  - {name: at, configs: [missing.yaml]}\n")
    with pytest.raises(SystemExit) as exit_:
        main([str(bad), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2


def test_two_method_mini_study_runs_resumes_and_reports(tmp_path, caplog):
    common = tmp_path / "common.yaml"
    common.write_text(TINY_COMMON)
    study = tmp_path / "study.yaml"
    at, trades = (os.path.join(ROOT, "configs", "digits", name) for name in ("at.yaml", "trades.yaml"))
    study.write_text(f"common:\n  configs: [{common}]\nruns:\n  - {{name: at, configs: [{at}]}}\n"
                     f"  - {{name: trades, configs: [{at}, {trades}]}}\n")
    out = tmp_path / "out"
    caplog.set_level("INFO")
    main([str(study), "--out", str(out)])
    for name in ("at", "trades"):
        metrics = json.load(open(out / name / "version_0" / "metrics.json"))
        assert "test/rloss_pgd" in metrics and "flatness/avg_rloss" in metrics
        assert "early_stopping/best_rerr" in metrics
    assert "[2/2] trades:" in caplog.text and "test RErr" in caplog.text
    report = out / "report"
    assert (report / "table.md").read_text().count("\n") == 4
    assert (report / "fig1_rloss_vs_flatness.png").read_bytes()[:4] == b"\x89PNG"
    caplog.clear()
    main([str(study), "--out", str(out)])  # everything finished: both skipped
    assert caplog.text.count("finished before, skipped") == 2
