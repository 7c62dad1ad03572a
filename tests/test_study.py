"""The study: its file names existing recipes, a one-epoch two-method mini study runs end to end and
resumes, and the report comes out of it."""

import glob
import json
import os
import signal

import pytest
import torch
from pytorch_lightning import Callback

from lit_robust.study.jobs import Launcher, Run, log_path, run_directory
from lit_robust.study.runner import command, expand_runs, load_study, main, run_study, waves
from tests.conftest import ROOT

STUDY = os.path.join(ROOT, "configs", "study", "digits_methods.yaml")
GRID_STUDY = os.path.join(ROOT, "configs", "study", "digits.yaml")
TINY_COMMON = """
trainer:
  max_epochs: 1
  limit_train_batches: 2
  enable_progress_bar: false
  callbacks+:
    - class_path: lit_robust.callbacks.FlatnessMonitor
      init_args: {fit: {examples: 16, samples: 1, pgd_steps: 1, ascent_iterations: 1},
                  test: {examples: 16, samples: 1, pgd_steps: 1, pgd_restarts: 1, ascent_iterations: 1,
                         ascent_restarts: 1}, measures: [avg_rloss, avg_loss]}
    - class_path: lit_robust.callbacks.RobustEarlyStopping
      init_args: {every_n_epochs: 1, steps: 2, restarts: 1}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {save_last: true}
model:
  init_args: {val_steps: 2, val_restarts: 1, test_steps: 2, test_restarts: 1, train_steps: 2}
data:
  init_args: {eval_size: 32, held_out_size: 32, train_eval_size: 32, eval_batch_size: 32}
"""


def load_from_root(path: str):
    """A study file of the repository, read as `make study` reads it (its configs relative to the root)."""
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        return load_study(path)
    finally:
        os.chdir(old)


def test_study_file_names_existing_recipes():
    study = load_from_root(STUDY)
    names = {run["name"] for run in study["runs"]}
    for method in ("at", "trades", "mart", "awp", "amp", "entropy_sgd", "friendly_at", "rotation",
                   "weight_averaging", "weight_clipping", "label_smoothing", "label_noise", "adam",
                   "at_early_stopping_rloss", "swa", "kd_swa", "temporal_ensembling", "consistency", "sam",
                   "asam", "hat"):
        assert method in names
    at = os.path.join("configs", "digits", "at.yaml")
    for run in study["runs"]:  # every run is the AT recipe, possibly with overlays after it
        assert run["configs"][0] == at, run["name"]


def test_the_grid_study_is_every_combination_of_its_axes_with_the_values_in_each_command():
    study = load_from_root(GRID_STUDY)
    runs = expand_runs(study)
    grid = study["runs"][0]["grid"]
    assert len(grid) >= 3 and len(runs) >= 60
    combinations = set()
    for run in runs:
        argv = command(study, study["runs"][0], run, "out", [])
        values = tuple(argv[len(argv) - 1 - argv[::-1].index(option) + 1] for option in grid)  # last given wins
        combinations.add(values)
        assert run.name == "at" + "".join(f"_{option.split('.')[-1]}{value}" for option, value in zip(grid, values))
    expected = 1
    for values in grid.values():
        expected *= len(values)
    assert len(combinations) == len(runs) == expected


def test_grid_points_combine_with_seeds_and_bad_grids_are_refused(tmp_path):
    study = {"runs": [{"name": "at", "configs": [], "grid": {"--a.lr": [0.1, 0.2], "--b.wd": [0]}}], "seeds": [3, 4]}
    assert [(run.name, run.method, run.argv) for run in expand_runs(study)] == [
        ("at_lr0.1_wd0_seed3", "at", ["--a.lr", "0.1", "--b.wd", "0", "--seed_everything", "3"]),
        ("at_lr0.1_wd0_seed4", "at", ["--a.lr", "0.1", "--b.wd", "0", "--seed_everything", "4"]),
        ("at_lr0.2_wd0_seed3", "at", ["--a.lr", "0.2", "--b.wd", "0", "--seed_everything", "3"]),
        ("at_lr0.2_wd0_seed4", "at", ["--a.lr", "0.2", "--b.wd", "0", "--seed_everything", "4"])]
    for grid in ("lr: [1]", "{--a.lr: []}", "{--a.lr: [1, 1]}", "{--a.lr: [1], --b.lr: [2]}", "[1, 2]"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"runs:\n  - {{name: at, configs: [{STUDY}], grid: {grid}}}\n")
        with pytest.raises(ValueError, match="grid"):
            load_study(str(bad))


@pytest.mark.parametrize("text, args", [
    ("runs:\n  - {name: at, configs: [missing.yaml]}\n", []),
    (f"seeds: [0, 0]\nruns:\n  - {{name: at, configs: [{STUDY}]}}\n", []),
    (f"runs:\n  - {{name: at, configs: [{STUDY}], seeds: 1}}\n", []),
    (f"runs:\n  - {{name: at, configs: [{STUDY}]}}\n", ["--jobs", "0"]),
    (f"runs:\n  - {{name: at, configs: [{STUDY}], after: [nobody]}}\n", []),
    (f"runs:\n  - {{name: a, configs: [{STUDY}], after: [b]}}\n  - {{name: b, configs: [{STUDY}], after: [a]}}\n", []),
])
def test_bad_study_file_is_one_message(tmp_path, capsys, text, args):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main([str(bad), "--out", str(tmp_path / "out")] + args)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("error:") == 1


# the local launcher's runs start new processes (imports dominate): no per-epoch measures there
TINIEST_COMMON = """
trainer: {max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1, enable_progress_bar: false}
model:
  init_args: {val_steps: 1, val_restarts: 1, test_steps: 1, test_restarts: 1, train_steps: 1, test_on_train: false}
data:
  init_args: {eval_size: 16, held_out_size: 16, train_eval_size: 16, eval_batch_size: 16}
"""


def write_study(tmp_path, body: str, common_text: str = TINY_COMMON) -> str:
    common = tmp_path / "common.yaml"
    common.write_text(common_text)
    study = tmp_path / "study.yaml"
    study.write_text(f"common:\n  configs: [{common}]\n" + body)
    return str(study)


AT, TRADES = (os.path.join(ROOT, "configs", "digits", name) for name in ("at.yaml", "trades.yaml"))


def test_local_launcher_runs_two_at_once_and_reports(tmp_path, caplog):
    study = write_study(tmp_path, f"runs:\n  - {{name: at, configs: [{AT}]}}\n"
                                  f"  - {{name: trades, configs: [{AT}, {TRADES}]}}\n",
                        TINIEST_COMMON)
    out = tmp_path / "out"
    caplog.set_level("INFO")
    main([study, "--out", str(out), "--launcher", "local", "--jobs", "2"])
    for name in ("at", "trades"):
        metrics = json.load(open(out / name / "version_0" / "metrics.json"))
        assert "test/rloss_pgd" in metrics
        assert (out / f"{name}.log").read_text().startswith("$ lit-robust fit --config")
    # both were handed to the executor before either finished: two at once
    assert caplog.text.index("trades: running") < caplog.text.index("at: finished")
    assert "finished 2/2, running 0, failed 0" in caplog.text and "test RErr" in caplog.text
    report = out / "report"
    assert (report / "table.md").read_text().count("\n") == 4
    assert (report / "fig1_rloss_vs_flatness.png").read_bytes()[:4] == b"\x89PNG"
    caplog.clear()
    main([study, "--out", str(out)])  # everything finished: both skipped
    assert caplog.text.count("finished before, skipped") == 2


def test_debug_launcher_seeds_failure_report_and_resume(tmp_path, caplog):
    study = write_study(tmp_path, f"seeds: [0, 1]\nruns:\n  - {{name: at, configs: [{AT}]}}\n"
                                  f"  - {{name: trades, configs: [{AT}, {TRADES}]}}\n"
                                  f"  - {{name: broken, configs: [{AT}], seeds: [3], "
                                  f"args: [--trainer.max_epochs, x]}}\n"
                                  f"  - {{name: student, configs: [{AT}], seeds: [0], after: [broken]}}\n")
    out = tmp_path / "out"
    caplog.set_level("INFO")
    with pytest.raises(SystemExit) as exit_:
        main([study, "--out", str(out), "--launcher", "debug"])
    assert exit_.value.code == 1
    names = ("at_seed0", "at_seed1", "trades_seed0", "trades_seed1")
    for name in names:
        assert (out / name / "version_0" / "metrics.json").is_file()
        config = (out / name / "version_0" / "config.yaml").read_text()
        assert f"seed_everything: {name[-1]}" in config
    broken_log = out / "broken_seed3.log"
    assert "broken_seed3: FAILED" in caplog.text and str(broken_log) in caplog.text
    assert "error:" in broken_log.read_text() and "max_epochs" in broken_log.read_text()
    assert not (out / "broken_seed3" / "version_0" / "metrics.json").exists()
    # a run that comes after a failed one is not started, and is reported
    assert "student_seed0: not run, a run it comes after failed" in caplog.text
    assert not (out / "student_seed0.log").exists()

    # per-method mean and standard deviation over the seeds, from the runs' metrics.json
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
            (out / "report" / "table_by_method.md").read_text().splitlines()[2:]}
    assert set(rows) == {"at", "trades"}
    for method in ("at", "trades"):
        values = [json.load(open(out / f"{method}_seed{s}" / "version_0" / "metrics.json"))["test/rloss_pgd"]
                  for s in (0, 1)]
        mean, std = sum(values) / 2, abs(values[0] - values[1]) / 2 ** 0.5
        assert rows[method][1] == "2"
        assert rows[method][1 + 7] == f"{mean:.3f} ± {std:.3f}"  # RLoss (test), the 7th column

    # the granulated Kendall coefficient along the seed (the runs of one method differ only in it)
    main([study, "--out", str(out), "--report-only", "--axes", "seed_everything"])
    header = (out / "report" / "measures.csv").read_text().splitlines()[0]
    assert "Granulated Kendall RLoss (test) seed_everything" in header and "Psi RLoss gap" in header

    # a killed study: at_seed0 was stopped after its checkpoint (no metrics.json); the others are skipped
    ckpt = out / "at_seed0" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    (out / "at_seed0" / "version_0" / "metrics.json").unlink()
    finished = (out / "at_seed1" / "version_0" / "metrics.json").stat().st_mtime
    caplog.clear()
    with pytest.raises(SystemExit):
        main([study, "--out", str(out), "--launcher", "debug", "--", "--trainer.max_epochs", "2"])
    assert caplog.text.count("finished before, skipped") == 3
    assert (out / "at_seed1" / "version_0" / "metrics.json").stat().st_mtime == finished
    second = (out / "at_seed0.log").read_text().split("$ lit-robust")[-1]
    assert f"--ckpt_path {ckpt}" in second
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 1  # resumed: one more epoch
    assert (out / "at_seed0" / "version_0" / "metrics.json").is_file()


def test_report_only_uses_the_finished_runs(tmp_path):
    study = write_study(tmp_path, f"runs:\n  - {{name: at, configs: [{AT}]}}\n")
    with pytest.raises(SystemExit) as exit_:  # nothing finished yet: one message
        main([study, "--out", str(tmp_path / "out"), "--report-only"])
    assert exit_.value.code == 2


def test_slurm_launcher_writes_one_array_job(tmp_path, monkeypatch):
    import submitit
    import submitit.core.utils

    submitted = []

    def sbatch(self, *args, **kwargs):
        submitted.append(self.command)
        return "Submitted batch job 4242\n"

    monkeypatch.setattr(submitit.core.utils.CommandFunction, "__call__", sbatch)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    study = write_study(tmp_path, f"seeds: [0, 1, 2]\nruns:\n  - {{name: at, configs: [{AT}]}}\n"
                                  f"  - {{name: trades, configs: [{AT}, {TRADES}]}}\n")
    out = tmp_path / "out"
    launcher = Launcher("slurm", partition="gpu_a100", time=90, gpus_per_run=1, array_parallelism=4)
    result = run_study(study, str(out), launcher=launcher, wait=False)
    assert len(result["submitted"]) == 6 and len(submitted) == 1 and submitted[0][0] == "sbatch"
    script = open(submitted[0][-1]).read() if os.path.isfile(submitted[0][-1]) else \
        open(glob.glob(str(out / ".submitit" / "**" / "*.sh"), recursive=True)[0]).read()
    assert "#SBATCH --partition=gpu_a100" in script
    assert "#SBATCH --time=90" in script
    assert "#SBATCH --gpus-per-node=1" in script
    assert "#SBATCH --array=0-5%4" in script
    # each task is a ResumableRun (submitit requeues it from last.ckpt), with Lightning's own requeue off
    from submitit.core.utils import DelayedSubmission

    from lit_robust.study.jobs import NO_LIGHTNING_REQUEUE, ResumableRun

    (pickled,) = glob.glob(str(out / ".submitit" / "**" / "*_submitted.pkl"), recursive=True)[:1]
    delayed = DelayedSubmission.load(pickled)
    assert isinstance(delayed.function, ResumableRun)
    assert delayed.args[0][-2:] == NO_LIGHTNING_REQUEUE and delayed.args[3].endswith("last.ckpt")


def test_runs_after_others_come_in_a_later_wave_and_name_their_checkpoints(tmp_path):
    study = {"runs": [{"name": "hat", "configs": ["a.yaml"], "after": ["standard"],
                       "args": ["--model.init_args.standard_checkpoint",
                                "{out}/standard/version_0/checkpoints/last.ckpt"]},
                      {"name": "standard", "configs": ["a.yaml"]}, {"name": "at", "configs": ["a.yaml"]}]}
    assert waves(study) == [["standard", "at"], ["hat"]]
    argv = command(study, study["runs"][0], Run("hat", "hat"), str(tmp_path), [])
    assert argv[argv.index("--model.init_args.standard_checkpoint") + 1] == \
        os.path.join(str(tmp_path), "standard", "version_0", "checkpoints", "last.ckpt")


class SchedulerSignal(Callback):
    """Stands for the scheduler: at the start of epoch 1 (epoch 0 is in last.ckpt) it sends the job the signal
    submitit gets before a time limit or on preemption, once (``record`` is written then); it records how the
    run's cluster environment is set up."""

    def __init__(self, record: str) -> None:
        self.record = record

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != 1 or os.path.exists(self.record):
            return
        environment = trainer._accelerator_connector.cluster_environment
        with open(self.record, "w") as f:
            json.dump({"environment": type(environment).__name__,
                       "auto_requeue": getattr(environment, "auto_requeue", None),
                       "usr1": str(signal.getsignal(signal.SIGUSR1))}, f)
        signal.raise_signal(signal.SIGUSR2)


RESUMABLE_COMMON = """
trainer:
  max_epochs: 2
  limit_train_batches: 2
  limit_val_batches: 1
  enable_progress_bar: false
  callbacks+:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{save_last: true}}
    - class_path: tests.test_study.SchedulerSignal
      init_args: {{record: {record}}}
model:
  init_args: {{val_steps: 1, val_restarts: 1, test_steps: 1, test_restarts: 1, train_steps: 1, test_on_train: false}}
data:
  init_args: {{eval_size: 16, held_out_size: 16, train_eval_size: 16, eval_batch_size: 16}}
"""


def as_job(tmp_path, job_id: str, delayed) -> str:
    """``delayed`` written as the submitted job ``job_id`` of a local submitit folder; returns the folder."""
    from submitit.core.utils import JobPaths

    folder = tmp_path / "jobs"
    folder.mkdir(exist_ok=True)
    delayed.dump(JobPaths(folder, job_id=job_id).submitted_pickle)
    return str(folder)


@pytest.mark.parametrize("timeout_min, countdown", [(24 * 60, 3), (1, 2)])  # preempted; timed out (of 3)
def test_a_run_stopped_by_the_scheduler_is_requeued_and_resumes_from_last_ckpt(tmp_path, monkeypatch, timeout_min,
                                                                             countdown):
    from submitit.core.submission import process_job
    from submitit.core.utils import DelayedSubmission, JobPaths, pickle_load
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    from lit_robust.study.jobs import NO_LIGHTNING_REQUEUE, ResumableRun, last_checkpoint
    from lit_robust.study.runner import expand_runs

    record = tmp_path / "signalled.json"
    common = RESUMABLE_COMMON.format(record=record)
    path = write_study(tmp_path, f"runs:\n  - {{name: at, configs: [{AT}]}}\n", common)
    study, out = load_study(path), str(tmp_path / "out")
    os.makedirs(out)
    (run,) = expand_runs(study)
    argv = command(study, study["runs"][0], run, out, []) + NO_LIGHTNING_REQUEUE
    # the job runs on SLURM as far as Lightning can tell (one task); submitit's job is a local one
    for name, value in (("SLURM_NTASKS", "1"), ("SLURM_JOB_NAME", "lit_robust_study"), ("SLURM_PROCID", "0"),
                        ("SLURM_LOCALID", "0"), ("SLURM_NODEID", "0"), ("SUBMITIT_EXECUTOR", "local"),
                        ("SUBMITIT_LOCAL_JOB_ID", "7")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("SUBMITIT_FOLDER", "")
    ckpt, log_file = last_checkpoint(out, "at"), log_path(out, "at")
    delayed = DelayedSubmission(ResumableRun(), argv, log_file, 1, ckpt)
    delayed.set_timeout(timeout_min, 3)
    folder = as_job(tmp_path, "7", delayed)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT)}
    try:
        with pytest.raises(SystemExit) as exit_:  # as the job process: stopped in epoch 1, requeued
            process_job(folder)
        paths = JobPaths(folder, job_id="7")
        assert exit_.value.code == LOCAL_REQUEUE_RETURN_CODE and not paths.result_pickle.exists()
        requeued = DelayedSubmission.load(paths.submitted_pickle)
        assert requeued.args[0][-2:] == ["--ckpt_path", ckpt] and requeued.args[0].count("--ckpt_path") == 1
        assert requeued._timeout_countdown == countdown
        assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 0
        process_job(folder)  # the requeued job: the same process_job, with the submission checkpoint() wrote
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert pickle_load(paths.result_pickle) == ("success", 0)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 1  # resumed: epoch 1 trained
    metrics = json.loads(open(os.path.join(run_directory(out, "at"), "metrics.json")).read())
    commands = open(log_file).read().split("$ lit-robust ")[1:]
    assert len(commands) == 2 and "--ckpt_path" not in commands[0] and f"--ckpt_path {ckpt}" in commands[1]
    assert "stopped by the scheduler; requeued" in commands[0]
    # Lightning's own SLURM requeue is off: no SIGUSR1 handler of its own, only submitit's requeue
    assert json.loads(record.read_text()) == {"environment": "SLURMEnvironment", "auto_requeue": False,
                                              "usr1": str(signal.Handlers.SIG_DFL)}
    if countdown == 2:
        return
    # the same run uninterrupted (the signal's record is there: no signal) ends with the same numbers
    reference = str(tmp_path / "reference")
    os.makedirs(reference)
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "8")
    folder = as_job(tmp_path, "8", DelayedSubmission(ResumableRun(), [a.replace(out, reference) for a in argv],
                                                     log_path(reference, "at"), 1, last_checkpoint(reference, "at")))
    try:
        process_job(folder)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    uninterrupted = json.loads(open(os.path.join(run_directory(reference, "at"), "metrics.json")).read())
    for key in ("test/rloss_pgd", "test/rerr_pgd", "test/err"):
        assert metrics[key] == pytest.approx(uninterrupted[key], abs=1e-6), key


def test_a_failed_run_is_reported_with_the_error_line_of_its_latest_attempt(tmp_path):
    from lit_robust.study.jobs import last_error

    log = tmp_path / "run.log"
    log.write_text("$ lit-robust fit --a\nerror: epsilon=-1 is not allowed\n$ lit-robust fit --b\nTraceback\n")
    assert last_error(str(log)) == ""  # the earlier attempt's error is not the reason of the latest
    log.write_text(log.read_text() + "error: a=1 is not allowed\nerror: b=2 is not allowed\n")
    assert last_error(str(log)) == "error: b=2 is not allowed"
    assert last_error(str(tmp_path / "none.log")) == ""
