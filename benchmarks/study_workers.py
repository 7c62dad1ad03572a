"""Study workers: two local runs at once with one thread each against one run at a time with two threads.

    python benchmarks/study_workers.py [--epochs 3] [--out DIR]

A mini study of four short digits AT runs (``configs/digits/at.yaml``, ``--epochs`` epochs, a
small test: PGD-5 without restarts on 200 images, no train-split evaluation) runs twice through
``lit_robust.study`` with the local launcher: ``--jobs 1`` with 2 threads per run, then
``--jobs 2`` with 1 thread per run. Prints both wall-clock times and the ratio (> 1: two workers of
one thread are faster), which decides ``make study``'s ``--jobs 2``. Run it on an otherwise idle
machine with at least 2 cores.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lit_robust.study.jobs import Launcher  # noqa: E402
from lit_robust.study.runner import run_study  # noqa: E402

SMALL_TEST = """
trainer: {enable_progress_bar: false}
model:
  init_args: {test_steps: 5, test_restarts: 1, test_on_train: false}
data:
  init_args: {eval_size: 200}
"""


def mini_study(directory: str, epochs: int) -> str:
    common = os.path.join(directory, "small_test.yaml")
    with open(common, "w") as f:
        f.write(SMALL_TEST)
    at = os.path.join(ROOT, "configs", "digits", "at.yaml")
    path = os.path.join(directory, "study.yaml")
    with open(path, "w") as f:
        f.write(f"seeds: [0, 1, 2, 3]\ncommon:\n  configs: [{common}]\n  args: [--trainer.max_epochs, {epochs}]\n"
                f"runs:\n  - {{name: at, configs: [{at}]}}\n")
    return path


def timed(study: str, out: str, jobs: int, threads: int) -> float:
    start = time.perf_counter()
    summary = run_study(study, out, launcher=Launcher("local", jobs=jobs, cpus_per_run=threads))
    if summary["failed"]:
        raise RuntimeError(f"runs failed: {summary['failed']} (logs in {out})")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=None, help="directory for the runs (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    directory = args.out or tempfile.mkdtemp(prefix="study_workers_")
    os.makedirs(directory, exist_ok=True)
    study = mini_study(directory, args.epochs)
    one = timed(study, os.path.join(directory, "jobs1_threads2"), jobs=1, threads=2)
    print(f"1 worker x 2 threads: {one:.1f} s for 4 runs of {args.epochs} epochs")
    two = timed(study, os.path.join(directory, "jobs2_threads1"), jobs=2, threads=1)
    print(f"2 workers x 1 thread: {two:.1f} s for 4 runs of {args.epochs} epochs")
    print(f"ratio (1 worker x 2 threads) / (2 workers x 1 thread): {one / two:.2f}")
    if args.out is None:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
