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

Each run logs to ``OUT/<name>/version_0`` and its output to ``OUT/<name>.log``; a run whose ``metrics.json`` exists
is skipped, and a run that was interrupted resumes from its ``last.ckpt``, so the study can be stopped and started
again. A run that the scheduler stops (a time limit or a preemption) is requeued by submitit and resumes from its
``last.ckpt`` by itself (:class:`~lit_robust.study.jobs.ResumableRun`; Lightning's own SLURM requeue is off for the
runs). A run that fails is reported with its log and does not stop the others; the exit status is 1 when any failed.
The runs are handed to a submitit executor: ``local`` (``--jobs N`` processes at once, each with its share of the
CPU threads or its own GPU), ``slurm`` (one job array for the whole study) or ``debug`` (in this process, one after
the other). The report (``OUT/report``, see :mod:`lit_robust.study.report`) is written from the runs that have
finished, at the end or at any time with ``--report-only``.
"""

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import yaml

from lit_robust.errors import check_readable_file, one_line_error
from lit_robust.study.jobs import LAUNCHERS, Launcher, Run, last_checkpoint, launch, log_path, resumed, run_directory
from lit_robust.study.report import make_report

log = logging.getLogger(__name__)


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


def expand_runs(study: Dict) -> List[Run]:
    """Every (study entry, grid point, seed) as a :class:`~lit_robust.study.jobs.Run` (its grid and seed arguments;
    the rest of its command line comes later, :func:`command`)."""
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
