"""Runs as submitit jobs: where each run writes, the job that runs it (requeued by the scheduler and resumed from
its last checkpoint), the launchers (local processes, a SLURM job array, this process) and the progress of the
runs handed to them.

Both the study runner (:mod:`lit_robust.study.runner`, a run is ``lit-robust fit``) and ``lit-robust-measure``
(:mod:`lit_robust.study.measure`, a run measures one model) launch their runs here.
"""

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import submitit

from lit_robust.metric_names import FLATNESS_AVG_RLOSS, TEST_RERR_PGD, TEST_RLOSS_PGD, TEST_RLOSS_PGD_TRAIN

log = logging.getLogger(__name__)


LAUNCHERS = ("local", "slurm", "debug")


CLI = "lit_robust.cli:main"
"""The entry point of a study's runs (``lit-robust``)."""


@dataclass
class Run:
    """One run of the study to launch: its directory name, its method (the study entry) and its command line.
    Its results, once it has finished, are read as a :class:`lit_robust.study.runs.RunResults`."""

    name: str
    method: str
    argv: List[str] = field(default_factory=list)
    entry: str = CLI
    """The ``module:function`` the job calls with ``argv`` (``lit-robust``'s; a measurement's is
    :func:`lit_robust.study.measure.main`)."""


def run_directory(out: str, name: str) -> str:
    return os.path.join(out, name, "version_0")


def log_path(out: str, name: str) -> str:
    """The file with the output (stdout and stderr) of run ``name``."""
    return os.path.join(out, name + ".log")


def last_checkpoint(out: str, name: str) -> str:
    """The checkpoint run ``name`` writes at the end of each epoch, and resumes from."""
    return os.path.join(run_directory(out, name), "checkpoints", "last.ckpt")


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
