"""Run a study (many recipes, one after the other), then the report.

    python -m lit_robust.study configs/study/digits.yaml --out study/digits

A study file lists runs; each has a ``name`` and the ``configs`` given to ``train.py fit``
(later files override earlier ones), and optionally ``args`` (more command-line arguments). The
study's ``common`` configs and args go after every run's own. Each run logs to
``OUT/<name>/version_0``; a run whose ``metrics.json`` exists is skipped, and a run that was
interrupted resumes from its ``last.ckpt``, so the study can be stopped and started again.
A progress line per run shows what was measured; at the end the report is written to
``OUT/report``.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import yaml

from lit_robust.report import make_report

log = logging.getLogger(__name__)
TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")


def load_study(path: str) -> Dict:
    """Read and check a study file; errors name the file and the entry."""
    with open(path) as f:
        study = yaml.safe_load(f)
    if not isinstance(study, dict) or not isinstance(study.get("runs"), list) or not study["runs"]:
        raise ValueError(f"{path}: a study file needs a non-empty list 'runs'")
    names = set()
    for i, run in enumerate(study["runs"]):
        if not isinstance(run, dict) or "name" not in run or not run.get("configs"):
            raise ValueError(f"{path}: runs[{i}] needs 'name' and 'configs'")
        if run["name"] in names:
            raise ValueError(f"{path}: run name {run['name']!r} appears twice")
        names.add(run["name"])
        for config in run["configs"] + study.get("common", {}).get("configs", []):
            if not os.path.isfile(config):
                raise ValueError(f"{path}: {run['name']}: config {config!r} does not exist")
    return study


def run_directory(out: str, name: str) -> str:
    return os.path.join(out, name, "version_0")


def command(study: Dict, run: Dict, out: str, extra: Sequence[str]) -> List[str]:
    """The ``train.py fit`` command line of one run (resuming from ``last.ckpt`` when there is one)."""
    common = study.get("common", {})
    args = [sys.executable, TRAIN, "fit"]
    for config in run["configs"] + common.get("configs", []):
        args += ["--config", config]
    args += [str(a) for a in run.get("args", []) + common.get("args", [])] + list(extra)
    args += ["--trainer.logger.init_args.save_dir", out, "--trainer.logger.init_args.name", run["name"],
             "--trainer.logger.init_args.version", "0", "--trainer.enable_progress_bar", "false"]
    last = os.path.join(run_directory(out, run["name"]), "checkpoints", "last.ckpt")
    if os.path.isfile(last):
        args += ["--ckpt_path", last]
    return args


def progress_line(index: int, total: int, name: str, seconds: float, metrics: Dict) -> str:
    def value(key: str) -> str:
        v = metrics.get(key)
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    return (f"[{index}/{total}] {name}: {seconds / 60:.1f} min, test RErr {value('test/rerr_pgd')}, "
            f"RLoss {value('test/rloss_pgd')} (train {value('test/rloss_pgd_train')}), "
            f"avg flatness {value('flatness/avg_rloss')}")


def run_study(path: str, out: str, only: Optional[Sequence[str]] = None, extra: Sequence[str] = ()) -> Dict:
    """Run every (or the ``only`` named) run of the study file at ``path`` and write the report."""
    study = load_study(path)
    runs = [run for run in study["runs"] if not only or run["name"] in only]
    unknown = set(only or ()) - {run["name"] for run in study["runs"]}
    if unknown:
        raise ValueError(f"--only names runs that {path} does not have: {', '.join(sorted(unknown))}")
    os.makedirs(out, exist_ok=True)
    for index, run in enumerate(runs, 1):
        metrics_path = os.path.join(run_directory(out, run["name"]), "metrics.json")
        if os.path.isfile(metrics_path):
            log.info(f"[{index}/{len(runs)}] {run['name']}: finished before, skipped")
            continue
        log.info(f"[{index}/{len(runs)}] {run['name']}: running")
        start = time.time()
        with open(os.path.join(out, run["name"] + ".log"), "a") as output:
            result = subprocess.run(command(study, run, out, extra), stdout=output, stderr=subprocess.STDOUT)
        if result.returncode != 0 or not os.path.isfile(metrics_path):
            raise RuntimeError(f"{run['name']} failed (exit status {result.returncode}); "
                               f"see {os.path.join(out, run['name'] + '.log')}")
        with open(metrics_path) as f:
            log.info(progress_line(index, len(runs), run["name"], time.time() - start, json.load(f)))
    return make_report([run_directory(out, run["name"]) for run in runs], os.path.join(out, "report"))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_robust.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study file (YAML with 'runs')")
    parser.add_argument("--out", required=True, help="directory for the runs and the report")
    parser.add_argument("--only", default="", help="comma-separated run names to run (default: all)")
    parser.epilog = "Arguments after -- are added to every train.py fit command."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    only = [name for name in args.only.split(",") if name]
    try:
        summary = run_study(args.study, args.out, only, extra)
    except (ValueError, RuntimeError) as error:
        parser.exit(2, f"error: {error}\n")
    for name, r in summary["pearson"].items():
        log.info(f"Pearson r, {name}: {r:.3f}")
    log.info(f"Report: {summary['table_md']}")


if __name__ == "__main__":
    main()
