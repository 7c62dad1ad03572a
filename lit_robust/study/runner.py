"""Run a study (many recipes, each over its seeds) through submitit, then the report.

    python -m lit_robust.study configs/study/digits.yaml --out study/digits --jobs 2
    python -m lit_robust.study configs/study/digits.yaml --out study/digits --launcher slurm \\
        --partition gpu --time 240 --gpus-per-run 1 --array-parallelism 8
    python -m lit_robust.study configs/study/digits.yaml --out study/digits --report-only

A study file lists runs; each has a ``name`` and the ``configs`` given to ``lit-robust fit``
(later files override earlier ones), and optionally ``args`` (more command-line arguments) and
``seeds``. The study's ``common`` configs and args go after every run's own. ``seeds: [0, 1, 2]``
(top level for every run, or per run) makes one run per seed, named ``<name>_seed<S>`` and given
``--seed_everything S``; a run without seeds keeps its name and its recipe's seed. ``grid`` maps
command-line options to lists of values and makes one run per combination (the product of the lists),
named ``<name>_<option><value>...`` by the last part of each option (``--optimizer.init_args.lr:
[0.02, 0.05]`` -> ``at_lr0.02``, ``at_lr0.05``), before any seed suffix; the values each run had are
recorded in its ``config.yaml``, where the report's statistics read them. ``after: [a, b]``
makes a run wait until every run of entries ``a`` and ``b`` has finished (a teacher or standard
network it loads); ``{out}`` in ``args`` stands for the study's output directory, so that such a
run can name their checkpoints (``{out}/standard/version_0/checkpoints/last.ckpt``).

Each run logs to ``OUT/<name>/version_0`` and its output to ``OUT/<name>.log``; a run whose
``metrics.json`` exists is skipped, and a run that was interrupted resumes from its ``last.ckpt``,
so the study can be stopped and started again. A run that the scheduler stops (a time limit or a
preemption) is requeued by submitit and resumes from its ``last.ckpt`` by itself (:class:`ResumableRun`;
Lightning's own SLURM requeue is off for the runs). A run that fails is reported with its log and does
not stop the others; the exit status is 1 when any failed. The runs are handed to a submitit
executor: ``local`` (``--jobs N`` processes at once, each with its share of the CPU threads or its
own GPU), ``slurm`` (one job array for the whole study) or ``debug`` (in this process, one after
the other). The report (``OUT/report``, see :mod:`lit_robust.study.report`) is written from the runs that
have finished, at the end or at any time with ``--report-only``.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import submitit
import yaml

from lit_robust.errors import check_readable_file, one_line_error
from lit_robust.metric_names import FLATNESS_AVG_RLOSS, TEST_RERR_PGD, TEST_RLOSS_PGD, TEST_RLOSS_PGD_TRAIN
from lit_robust.study.report import make_report

log = logging.getLogger(__name__)
LAUNCHERS = ("local", "slurm", "debug")
CLI = "lit_robust.cli:main"
"""The entry point of a study's runs (``lit-robust``)."""


@dataclass
class Run:
    """One run of the study to launch: its directory name, its method (the study entry) and its command line.
    Its results, once it has finished, are read as a :class:`lit_robust.study.report.RunResults`."""

    name: str
    method: str
    argv: List[str] = field(default_factory=list)
    entry: str = CLI
    """The ``module:function`` the job calls with ``argv`` (``lit-robust``'s; a measurement's is
    :func:`lit_robust.study.measure.main`)."""


def load_study(path: str) -> Dict:
    """Read and check a study file; errors name the file and the entry."""
    check_readable_file(path, "study", "a study file (YAML with 'runs')")
    try:
        with open(path) as f:
            study = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"study={path!r} is not allowed: it is not YAML ({one_line_error(error)}); study must be "
                         f"a study file (YAML with 'runs')") from None
    if not isinstance(study, dict) or not isinstance(study.get("runs"), list) or not study["runs"]:
        raise ValueError(f"{path}: a study file needs a non-empty list 'runs'")
    _check_seeds(path, "seeds", study.get("seeds"))
    names = set()
    for i, run in enumerate(study["runs"]):
        if not isinstance(run, dict) or "name" not in run or not run.get("configs"):
            raise ValueError(f"{path}: runs[{i}] needs 'name' and 'configs'")
        if run["name"] in names:
            raise ValueError(f"{path}: run name {run['name']!r} appears twice")
        names.add(run["name"])
        _check_seeds(path, f"{run['name']}: seeds", run.get("seeds"))
        _check_grid(path, run["name"], run.get("grid"))
        after = run.get("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise ValueError(f"{path}: {run['name']}: after must be a list of run names (given: {after!r})")
        for config in run["configs"] + study.get("common", {}).get("configs", []):
            if not os.path.isfile(config):
                raise ValueError(f"{path}: {run['name']}: config {config!r} does not exist")
    for run in study["runs"]:
        unknown = [a for a in run.get("after", []) if a not in names]
        if unknown:
            raise ValueError(f"{path}: {run['name']}: after names runs the study does not have: {', '.join(unknown)}")
    try:
        waves(study)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return study


def _check_seeds(path: str, where: str, seeds) -> None:
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
                              or len(set(seeds)) != len(seeds)):
        raise ValueError(f"{path}: {where} must be a non-empty list of distinct integers (given: {seeds!r})")


def _check_grid(path: str, name: str, grid) -> None:
    if grid is None:
        return
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{path}: {name}: grid must map command-line options (--a.b) to lists of values "
                         f"(given: {grid!r})")
    for option, values in grid.items():
        if not isinstance(option, str) or not option.startswith("--") or len(option) < 3:
            raise ValueError(f"{path}: {name}: grid option {option!r} must be a command-line option such as "
                             f"--optimizer.init_args.lr")
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, (int, float, str, bool)) for v in values)
                or len({str(v) for v in values}) != len(values)):
            raise ValueError(f"{path}: {name}: grid {option} must be a non-empty list of distinct numbers or "
                             f"strings (given: {values!r})")
    labels = [grid_label(option) for option in grid]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: {name}: grid options must end in different names (given: {', '.join(grid)})")


def grid_label(option: str) -> str:
    """``--optimizer.init_args.lr`` -> ``lr``: the part of a grid option that names its runs."""
    return option.lstrip("-").split(".")[-1]


def grid_points(entry: Dict) -> List[tuple]:
    """``(name suffix, arguments)`` of every combination of the entry's ``grid`` (one empty point without)."""
    points = [("", [])]
    for option, values in (entry.get("grid") or {}).items():
        points = [(f"{suffix}_{grid_label(option)}{value}", args + [option, str(value)])
                  for suffix, args in points for value in values]
    return points


def waves(study: Dict) -> List[List[str]]:
    """The study's entry names in waves: every entry comes in a later wave than the entries it is ``after``."""
    remaining = {run["name"]: set(run.get("after", [])) for run in study["runs"]}
    placed: List[List[str]] = []
    done: set = set()
    while remaining:
        wave = [name for name, after in remaining.items() if after <= done]
        if not wave:
            raise ValueError(f"runs wait for each other in a cycle: {', '.join(sorted(remaining))}")
        placed.append(wave)
        done.update(wave)
        for name in wave:
            del remaining[name]
    return placed


def run_directory(out: str, name: str) -> str:
    return os.path.join(out, name, "version_0")


def log_path(out: str, name: str) -> str:
    """The file with the output (stdout and stderr) of run ``name``."""
    return os.path.join(out, name + ".log")


def expand_runs(study: Dict) -> List[Run]:
    """Every (study entry, grid point, seed) as a :class:`Run` (its grid and seed arguments; the rest of
    its command line comes later, :func:`command`)."""
    runs = []
    for entry in study["runs"]:
        seeds = entry.get("seeds", study.get("seeds"))
        for suffix, args in grid_points(entry):
            name = entry["name"] + suffix
            if seeds is None:
                runs.append(Run(name, entry["name"], args))
            else:
                runs += [Run(f"{name}_seed{seed}", entry["name"], args + ["--seed_everything", str(seed)])
                         for seed in seeds]
    return runs


def last_checkpoint(out: str, name: str) -> str:
    """The checkpoint run ``name`` writes at the end of each epoch, and resumes from."""
    return os.path.join(run_directory(out, name), "checkpoints", "last.ckpt")


def command(study: Dict, entry: Dict, run: Run, out: str, extra: Sequence[str]) -> List[str]:
    """The ``lit-robust fit`` arguments of one run (resuming from ``last.ckpt`` when there is one)."""
    common = study.get("common", {})
    args = ["fit"]
    for config in entry["configs"] + common.get("configs", []):
        args += ["--config", config]
    args += [str(a).replace("{out}", out) for a in entry.get("args", []) + common.get("args", [])]
    args += list(run.argv) + list(extra)
    args += ["--trainer.logger.init_args.save_dir", out, "--trainer.logger.init_args.name", run.name,
             "--trainer.logger.init_args.version", "0", "--trainer.enable_progress_bar", "false"]
    return resumed(args, last_checkpoint(out, run.name))


def resumed(argv: Sequence[str], checkpoint: str) -> List[str]:
    """``argv`` with ``--ckpt_path checkpoint`` in place of any ``--ckpt_path`` it has, when the file exists."""
    args, skip = [], False
    for arg in argv:
        if skip or arg == "--ckpt_path" or arg.startswith("--ckpt_path="):
            skip = arg == "--ckpt_path"
            continue
        args.append(arg)
    return args + (["--ckpt_path", checkpoint] if os.path.isfile(checkpoint) else [])


def execute(argv: List[str], output: str, threads: int = 0, requeued: Optional[Callable[[], bool]] = None,
            entry: str = CLI) -> int:
    """One run, as a submitit job: ``entry(argv)`` (by default ``lit_robust.cli.main``) with stdout and stderr
    appended to ``output`` and ``threads`` CPU threads (0: leave as is). Returns the exit status; never raises,
    so that a failed run is a result, not an exception in the executor -- except the exit with which submitit
    ends a job it has requeued (``requeued()`` true), which leaves the job without a result."""
    if threads > 0:
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)
    with open(output, "a", buffering=1) as stream, _redirected(stream):
        module, function = entry.split(":")
        program = "lit-robust" if entry == CLI else f"python -m {module}"
        stream.write(f"$ {program} " + " ".join(argv) + "\n")
        try:
            import importlib

            import torch

            if threads > 0:
                torch.set_num_threads(threads)
            getattr(importlib.import_module(module), function)(list(argv))
            return 0
        except SystemExit as exit_:
            if requeued is not None and requeued():
                stream.write("stopped by the scheduler; requeued, it resumes from its last checkpoint\n")
                raise
            code = exit_.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        except BaseException:  # noqa: B902 - any error of the run ends up in its log
            import traceback

            traceback.print_exc()
            return 1


class ResumableRun(submitit.helpers.Checkpointable):
    """One run as a submitit job that the scheduler may stop: on a time limit or a preemption it is requeued
    and resumes from its ``last.ckpt``.

    submitit calls :meth:`checkpoint` when the job gets its signal (on SLURM, ``USR2`` 90 seconds before the
    time limit and on preemption; the local launcher's ``--time`` limit sends it too), requeues the job with
    the submission it returns -- the same run with ``--ckpt_path`` its ``last.ckpt`` -- and ends the job
    without a result, so that the study goes on waiting for it. The epoch in progress is lost; every
    finished epoch is in ``last.ckpt`` (``ModelCheckpoint(save_last=True)``). submitit requeues a job that
    ran out of time up to 3 times, a preempted one without limit.
    """

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, argv: List[str], output: str, threads: int = 0, checkpoint: str = "",
                 entry: str = CLI) -> int:
        """Run ``argv`` (see :func:`execute`); ``checkpoint`` is the ``last.ckpt`` the run writes."""
        self.stopped = False
        return execute(argv, output, threads, requeued=lambda: self.stopped, entry=entry)

    def checkpoint(self, argv: List[str], output: str, threads: int = 0, checkpoint: str = "",
                   entry: str = CLI) -> submitit.helpers.DelayedSubmission:
        """The submission that resumes the run from ``checkpoint`` (or starts it again, when there is none yet)."""
        self.stopped = True
        return submitit.helpers.DelayedSubmission(ResumableRun(), resumed(argv, checkpoint), output, threads,
                                                  checkpoint, entry)


# Lightning's own SLURM requeue (on SIGUSR1: an hpc checkpoint and `scontrol requeue`) is off for the runs of a
# SLURM study: they are requeued by submitit (ResumableRun) only
NO_LIGHTNING_REQUEUE = ["--trainer.plugins+=pytorch_lightning.plugins.environments.SLURMEnvironment",
                        "--trainer.plugins.auto_requeue=false"]


@contextlib.contextmanager
def _redirected(stream):
    """Send file descriptors 1 and 2, ``sys.stdout``/``sys.stderr`` and the root logger to ``stream``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        logging.getLogger().removeHandler(handler)
        stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@dataclass
class Launcher:
    """Where the runs go: the submitit executor and its settings."""

    kind: str = "local"
    jobs: int = 1
    partition: Optional[str] = None
    time: int = 24 * 60
    gpus_per_run: int = 0
    array_parallelism: int = 32
    cpus_per_run: int = 0

    def check(self) -> None:
        for name, value, ok, allowed in (
                ("--launcher", self.kind, self.kind in LAUNCHERS, " or ".join(LAUNCHERS)),
                ("--jobs", self.jobs, self.jobs >= 1, "an integer >= 1"),
                ("--time", self.time, self.time >= 1, "minutes >= 1"),
                ("--gpus-per-run", self.gpus_per_run, self.gpus_per_run >= 0, "an integer >= 0"),
                ("--array-parallelism", self.array_parallelism, self.array_parallelism >= 1, "an integer >= 1"),
                ("--cpus-per-run", self.cpus_per_run, self.cpus_per_run >= 0, "an integer >= 0")):
            if not ok:
                raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")

    def executor(self, folder: str):
        """The submitit executor; its own logs (pickles, job stdout) go to ``folder``."""
        if self.kind == "debug":
            return submitit.DebugExecutor(folder)
        if self.kind == "local":
            executor = submitit.LocalExecutor(folder)
            executor.update_parameters(timeout_min=self.time)
            return executor
        executor = submitit.SlurmExecutor(folder)
        executor.update_parameters(time=self.time, gpus_per_node=self.gpus_per_run or None,
                                   cpus_per_task=self.cpus_per_run or None, array_parallelism=self.array_parallelism,
                                   partition=self.partition, job_name="lit_robust_study")
        return executor

    def threads(self) -> int:
        """CPU threads per run: ``cpus_per_run`` when given, else (local) the cores shared out between the
        ``jobs`` runs at once."""
        if self.kind != "local" or self.cpus_per_run:
            return self.cpus_per_run
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.jobs)


def local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA: CPU runs
        return 0


class Progress:
    """Finished / running / failed counts with elapsed times."""

    def __init__(self, total: int) -> None:
        self.total, self.start, self.started = total, time.time(), {}
        self.finished, self.failed = [], []

    def line(self) -> str:
        now = time.time()
        running = ", ".join(f"{name} {(now - t) / 60:.1f} min" for name, t in self.started.items())
        return (f"[{(now - self.start) / 60:.1f} min] finished {len(self.finished)}/{self.total}, "
                f"running {len(self.started)}" + (f" ({running})" if running else "") + f", failed {len(self.failed)}")


def _metrics_summary(metrics: Dict) -> str:
    def value(key: str) -> str:
        v = metrics.get(key)
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    return (f"test RErr {value(TEST_RERR_PGD)}, RLoss {value(TEST_RLOSS_PGD)} "
            f"(train {value(TEST_RLOSS_PGD_TRAIN)}), avg flatness {value(FLATNESS_AVG_RLOSS)}")


def _finish(progress: Progress, run: Run, out: str, status: Optional[int], error: str = "") -> None:
    seconds = time.time() - progress.started.pop(run.name)
    metrics_path = os.path.join(run_directory(out, run.name), "metrics.json")
    if status == 0 and os.path.isfile(metrics_path):
        progress.finished.append(run.name)
        with open(metrics_path) as f:
            log.info(f"{run.name}: finished in {seconds / 60:.1f} min, {_metrics_summary(json.load(f))}")
    else:
        progress.failed.append(run.name)
        reason = error or last_error(log_path(out, run.name)) or (f"exit status {status}" if status else
                                                                   "no metrics.json")
        log.error(f"{run.name}: FAILED after {seconds / 60:.1f} min ({reason}); see {log_path(out, run.name)}")
    log.info(progress.line())


def last_error(path: str) -> str:
    """The last ``error: ...`` line (a bad setting's one line) of the latest attempt in the log at ``path`` (after
    its last ``$ command`` line), or ``""``."""
    if not os.path.isfile(path):
        return ""
    errors: List[str] = []
    with open(path, errors="replace") as f:
        for line in f:
            errors = [] if line.startswith("$ ") else errors + [line.strip()] * line.startswith("error: ")
    return errors[-1] if errors else ""


def _job_done(job) -> bool:
    """Whether a submitted job has ended: its result file is written (the process may still be exiting)."""
    return job.paths.result_pickle.exists() or job.done()


def _job_status(job) -> tuple:
    """(exit status, error) of an ended submitit job; an error when the job itself died."""
    from submitit.core.utils import pickle_load

    try:
        if job.paths.result_pickle.exists():  # ("success", value) or ("error", traceback), written atomically
            outcome, value = pickle_load(job.paths.result_pickle)
            return (value, "") if outcome == "success" else (None, value.strip().splitlines()[-1])
        return job.result(), ""
    except Exception as error:  # the job process was killed, timed out, ...
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def launch(runs: Sequence[Run], out: str, launcher: Launcher, poll: float = 1.0, wait: bool = True) -> Progress:
    """Hand ``runs`` to the launcher's executor and follow them to the end (unless ``wait`` is False)."""
    executor = launcher.executor(os.path.join(out, ".submitit", "%j"))
    progress = Progress(len(runs))
    threads = launcher.threads()
    if launcher.kind == "debug":
        for run in runs:
            job = executor.submit(ResumableRun(), run.argv, log_path(out, run.name), threads,
                                  last_checkpoint(out, run.name), run.entry)
            progress.started[run.name] = time.time()
            log.info(f"{run.name}: running")
            try:
                status, error = job.result(), ""
            except Exception as exception:  # execute() returns its errors; this is the executor's own
                status, error = None, f"{type(exception).__name__}: {exception}"
            _finish(progress, run, out, status, error)
        return progress
    if launcher.kind == "slurm":
        jobs = executor.map_array(ResumableRun(), [run.argv + NO_LIGHTNING_REQUEUE for run in runs],
                                  [log_path(out, run.name) for run in runs], [threads] * len(runs),
                                  [last_checkpoint(out, run.name) for run in runs], [run.entry for run in runs])
        log.info(f"submitted job array {jobs[0].job_id.split('_')[0]} with {len(runs)} runs "
                 f"(at most {launcher.array_parallelism} at once)")
        now = time.time()
        pending = {run.name: (run, job) for run, job in zip(runs, jobs)}
        progress.started.update({run.name: now for run in runs})
        return _follow(progress, pending, out, poll) if wait else progress
    gpus = local_gpus() if launcher.gpus_per_run else 0
    queue, pending, free_slots = list(runs), {}, list(range(launcher.jobs))
    last_line = time.time()
    try:
        while queue or pending:
            while queue and free_slots:
                run, slot = queue.pop(0), free_slots.pop(0)
                if gpus:
                    executor.update_parameters(gpus_per_node=launcher.gpus_per_run,
                                               visible_gpus=[(slot * launcher.gpus_per_run + k) % gpus
                                                             for k in range(launcher.gpus_per_run)])
                job = executor.submit(ResumableRun(), run.argv, log_path(out, run.name), 0 if gpus else threads,
                                      last_checkpoint(out, run.name), run.entry)
                pending[run.name] = (run, job, slot)
                progress.started[run.name] = time.time()
                log.info(f"{run.name}: running (process {job.job_id}, log {log_path(out, run.name)})")
            time.sleep(poll)
            for name, (run, job, slot) in list(pending.items()):
                if _job_done(job):
                    del pending[name]
                    free_slots.append(slot)
                    _finish(progress, run, out, *_job_status(job))
            if time.time() - last_line > 60:
                log.info(progress.line())
                last_line = time.time()
    except KeyboardInterrupt:
        for run, job, _ in pending.values():
            job.cancel(check=False)
        raise
    return progress


def _follow(progress: Progress, pending: Dict, out: str, poll: float) -> Progress:
    last_line = time.time()
    while pending:
        time.sleep(poll)
        for name, (run, job) in list(pending.items()):
            if _job_done(job):
                del pending[name]
                _finish(progress, run, out, *_job_status(job))
        if time.time() - last_line > 60:
            log.info(progress.line())
            last_line = time.time()
    return progress


def run_study(path: str, out: str, only: Optional[Sequence[str]] = None, extra: Sequence[str] = (),
              launcher: Optional[Launcher] = None, report_only: bool = False, wait: bool = True,
              axes: Optional[Sequence[str]] = None) -> Dict:
    """Run every (or the ``only`` named) run of the study file at ``path`` that has not finished, then
    write the report of the finished ones (``axes``: those of the granulated Kendall coefficient, see
    :func:`lit_robust.study.report.make_report`). Returns the report's summary plus ``failed`` (run names)."""
    launcher = launcher or Launcher()
    launcher.check()
    study = load_study(path)
    entries = {entry["name"]: entry for entry in study["runs"]}
    runs = expand_runs(study)
    unknown = set(only or ()) - set(entries) - {run.name for run in runs}
    if unknown:
        raise ValueError(f"--only names runs that {path} does not have: {', '.join(sorted(unknown))}")
    runs = [run for run in runs if not only or run.name in only or run.method in only]
    os.makedirs(out, exist_ok=True)
    done = [run for run in runs if os.path.isfile(os.path.join(run_directory(out, run.name), "metrics.json"))]
    failed: List[str] = []
    if not report_only:
        for run in done:
            log.info(f"{run.name}: finished before, skipped")
        todo = [run for run in runs if run not in done]
        for run in todo:
            run.argv = command(study, entries[run.method], run, out, extra)
        stages = [[run for run in todo if run.method in wave] for wave in waves(study)]
        stages = [stage for stage in stages if stage]
        if len(stages) > 1 and not wait:
            raise ValueError("--no-wait needs a study without 'after': the later runs wait for earlier ones")
        for stage in stages:
            blocked = [run for run in stage if any(other.method in entries[run.method].get("after", [])
                                                   for other in runs if other.name in failed)]
            for run in blocked:
                log.error(f"{run.name}: not run, a run it comes after failed")
            failed += [run.name for run in blocked]
            stage = [run for run in stage if run not in blocked]
            if not stage:
                continue
            progress = launch(stage, out, launcher, wait=wait)
            failed += progress.failed
            if not wait:
                return {"failed": [], "submitted": [run.name for run in todo]}
        done = [run for run in runs if os.path.isfile(os.path.join(run_directory(out, run.name), "metrics.json"))]
    missing = [run.name for run in runs if run not in done]
    if missing:
        log.info(f"the report leaves out {len(missing)} runs without metrics.json: {', '.join(missing)}")
    if not done:
        raise RuntimeError("no run has finished yet: nothing to report")
    summary = make_report([run_directory(out, run.name) for run in done], os.path.join(out, "report"), axes)
    summary["failed"] = failed
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_robust.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study file (YAML with 'runs')")
    parser.add_argument("--out", required=True, help="directory for the runs, their logs and the report")
    parser.add_argument("--only", default="", help="comma-separated run or entry names to run (default: all)")
    parser.add_argument("--launcher", default="local", choices=LAUNCHERS,
                        help="submitit executor: local processes, a SLURM job array, or in this process (debug)")
    parser.add_argument("--jobs", type=int, default=1, help="local: runs at once (each gets cores // jobs threads)")
    parser.add_argument("--partition", default=None, help="slurm: partition")
    parser.add_argument("--time", type=int, default=24 * 60, help="time limit per run in minutes (local and slurm)")
    parser.add_argument("--gpus-per-run", type=int, default=0,
                        help="GPUs per run (slurm: per array task; local: each run its own GPU(s))")
    parser.add_argument("--cpus-per-run", type=int, default=0,
                        help="CPU threads per run (slurm: CPUs per task); 0: local cores // jobs, slurm the "
                             "cluster's default")
    parser.add_argument("--array-parallelism", type=int, default=32, help="slurm: array tasks running at once")
    parser.add_argument("--no-wait", action="store_true", help="slurm: submit and return (report later)")
    parser.add_argument("--report-only", action="store_true", help="only write the report of the finished runs")
    parser.add_argument("--axes", nargs="+", default=None, metavar="NAME",
                        help="report: hyper-parameters of the granulated Kendall coefficient (default: those that "
                             "vary across the runs)")
    parser.epilog = "Arguments after -- are added to every `lit-robust fit` command."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    only = [name for name in args.only.split(",") if name]
    launcher = Launcher(args.launcher, args.jobs, args.partition, args.time, args.gpus_per_run,
                        args.array_parallelism, args.cpus_per_run)
    try:
        summary = run_study(args.study, args.out, only, extra, launcher, args.report_only, wait=not args.no_wait,
                            axes=args.axes)
    except (ValueError, RuntimeError) as error:
        parser.exit(2, f"error: {error}\n")
    if "table_md" in summary:
        for name, r in summary["pearson"].items():
            log.info(f"Pearson r, {name}: {r:.3f}")
        log.info(f"Report: {summary['table_md']}")
    if summary["failed"]:
        log.error(f"{len(summary['failed'])} runs failed: "
                  + ", ".join(f"{name} (see {log_path(args.out, name)})" for name in summary["failed"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
