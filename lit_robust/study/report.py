"""Many runs -> the paper's table and plots: robust generalisation against flatness of the robust loss.

    python -m lit_robust.study.report RUN_DIRS... --out DIR [--axes lr weight_decay] [--resamples 1000] [--seed 0]

Each run directory is a TensorBoard log directory written by ``train.py`` (``metrics.json`` from
its test, event files with the per-epoch scalars, ``config.yaml``). The report writes

- ``table.md`` / ``table.csv``: the columns of Stutz et al. 2021, supplement Table D (Err, RErr PGD and AutoAttack on
  test and train, RErr after early stopping (held-out), average/worst flatness in Loss and RLoss), sorted by test RErr;
- ``fig1_rloss_vs_flatness.png``: test RLoss against average-case flatness in RLoss, worst-case
  flatness in RLoss and average-case flatness in clean Loss (Stutz et al. 2021, Fig. 1; supplement Sec. D),
  one point per run with the Pearson correlation in each title;
- ``fig5_flatness_over_epochs.png``: per run, held-out RLoss against flatness over the epochs,
  coloured from early to late (Stutz et al. 2021, Fig. 5);
- ``gap_vs_flatness.png``: the robust generalisation gap (test - train RLoss) against flatness;
- ``measures.md`` / ``measures.csv`` and ``measures_ranking.png``: how well each ``flatness/*`` measure of the
  runs predicts robust generalisation, with the hyper-parameters read from each run's ``config.yaml``
  (:mod:`lit_robust.study.measures_report`);
- ``table_by_method.md`` / ``table_by_method.csv``: the same columns per method, as mean and
  standard deviation over its seeds (runs named ``<method>_seed<S>``, as the study names them);

and logs the same figures to TensorBoard in ``DIR``.
"""

import argparse
import csv
import json
import logging
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lit_robust.cli.trainer_checks import check_directory
from lit_robust.errors import ConfigurationError
from lit_robust.metric_names import (
    EARLY_STOPPING_BEST_RERR,
    FLATNESS_AVG_LOSS,
    FLATNESS_AVG_RLOSS,
    FLATNESS_WORST_LOSS,
    FLATNESS_WORST_RLOSS,
    ROBUST_OVERFITTING_BEST_EPOCH,
    ROBUST_OVERFITTING_BEST_RLOSS,
    ROBUST_OVERFITTING_RISE_ABSOLUTE,
    TEST_ERR,
    TEST_RERR_AA,
    TEST_RERR_AA_TRAIN,
    TEST_RERR_PGD,
    TEST_RERR_PGD_TRAIN,
    TEST_RLOSS_PGD,
    TEST_RLOSS_PGD_TRAIN,
    VAL_RLOSS,
)
from lit_robust.study.measures_report import add_statistics_arguments, measured_models, write_measure_report
from lit_robust.study.runs import RunResults, load_run
from lit_robust.study.statistics import (
    check_bootstrap,
    correlation,
    resolve_axes,
)
from lit_robust.study.tables import format_value, write_markdown, write_table

log = logging.getLogger(__name__)

# (column title, metrics.json key). RErr after early stopping is the best held-out robust error
# of RobustEarlyStopping; a run that restored the best weights (restore_best_weights) also reports
# the early-stopped model in its test columns.
COLUMNS: List[Tuple[str, str]] = [
    ("Err (test)", TEST_ERR),
    ("RErr PGD (test)", TEST_RERR_PGD),
    ("RErr AA (test)", TEST_RERR_AA),
    ("RErr PGD (train)", TEST_RERR_PGD_TRAIN),
    ("RErr AA (train)", TEST_RERR_AA_TRAIN),
    ("RErr (early stop, held-out)", EARLY_STOPPING_BEST_RERR),
    ("RLoss (test)", TEST_RLOSS_PGD),
    ("RLoss (train)", TEST_RLOSS_PGD_TRAIN),
    ("Avg Loss", FLATNESS_AVG_LOSS),
    ("Worst Loss", FLATNESS_WORST_LOSS),
    ("Avg RLoss", FLATNESS_AVG_RLOSS),
    ("Worst RLoss", FLATNESS_WORST_RLOSS),
    ("Held-out RLoss min", ROBUST_OVERFITTING_BEST_RLOSS),
    ("Min epoch", ROBUST_OVERFITTING_BEST_EPOCH),
    ("Rise (held-out RLoss end - min)", ROBUST_OVERFITTING_RISE_ABSOLUTE),
]
FLATNESS_PANELS = [(FLATNESS_AVG_RLOSS, "average-case flatness in RLoss"),
                   (FLATNESS_WORST_RLOSS, "worst-case flatness in RLoss"),
                   (FLATNESS_AVG_LOSS, "average-case flatness in (clean) Loss")]


def table_rows(runs: Sequence[RunResults]) -> List[List[str]]:
    """Header and one row per run, sorted by test RErr (runs without it last)."""
    ordered = sorted(runs, key=lambda r: (math.isnan(r.test_rerr), r.test_rerr))
    header = ["Method"] + [title for title, _ in COLUMNS]
    return [header] + [[run.name] + [format_value(run.get(key), key) for _, key in COLUMNS] for run in ordered]


def write_tables(runs: Sequence[RunResults], out: str) -> Tuple[str, str]:
    """``table.md`` and ``table.csv`` in ``out``."""
    return write_table(table_rows(runs), out, "table")


SEED_SUFFIX = re.compile(r"_seed-?\d+$")


def method_of(name: str) -> str:
    """``at_seed1`` -> ``at``: the method of a run named by the study (a name without a seed is its own method)."""
    return SEED_SUFFIX.sub("", name)


def mean_and_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of the finite values; NaN where too few."""
    finite = [v for v in values if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else math.nan
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return mean, std


def method_statistics(runs: Sequence[RunResults]) -> Dict[str, Dict[str, object]]:
    """Per method: its runs (seeds) and, per column key, the mean and std over them."""
    groups: Dict[str, List[RunResults]] = {}
    for run in runs:
        groups.setdefault(method_of(run.name), []).append(run)
    return {method: {"runs": [run.name for run in group],
                     "columns": {key: mean_and_std([run.get(key) for run in group]) for _, key in COLUMNS}}
            for method, group in groups.items()}


def method_rows(runs: Sequence[RunResults]) -> List[List[str]]:
    """Header and one row per method with ``mean ± std`` over its seeds, sorted by mean test RErr."""
    statistics = method_statistics(runs)

    def sort_key(method: str) -> Tuple[bool, float]:
        columns = statistics[method]["columns"]
        aa, pgd = columns[TEST_RERR_AA][0], columns[TEST_RERR_PGD][0]
        value = aa if math.isfinite(aa) else pgd
        return math.isnan(value), value

    rows = [["Method", "Seeds"] + [title for title, _ in COLUMNS]]
    for method in sorted(statistics, key=sort_key):
        cells = []
        for _, key in COLUMNS:
            mean, std = statistics[method]["columns"][key]
            cells.append(format_value(mean) if math.isnan(std) or math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
        rows.append([method, str(len(statistics[method]["runs"]))] + cells)
    return rows


def write_method_tables(runs: Sequence[RunResults], out: str) -> Tuple[str, str]:
    """``table_by_method.md`` (``mean ± std``) and ``table_by_method.csv`` (mean and std columns) in ``out``."""
    statistics = method_statistics(runs)
    md_path, csv_path = os.path.join(out, "table_by_method.md"), os.path.join(out, "table_by_method.csv")
    rows = method_rows(runs)
    write_markdown(rows, md_path)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Method", "Seeds"] + [f"{title} {part}" for title, _ in COLUMNS for part in ("mean", "std")])
        for method in (row[0] for row in rows[1:]):
            columns = statistics[method]["columns"]
            writer.writerow([method, len(statistics[method]["runs"])]
                            + [format_value(v) for _, key in COLUMNS for v in columns[key]])
    return md_path, csv_path


def _scatter(ax, runs: Sequence[RunResults], x_key: str, y_of, xlabel: str, ylabel: str) -> float:
    xs = [run.get(x_key) for run in runs]
    ys = [y_of(run) for run in runs]
    for run, x, y in zip(runs, xs, ys):
        if math.isfinite(x) and math.isfinite(y):
            ax.scatter(x, y, s=30)
            ax.annotate(run.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    r = correlation(xs, ys, "Pearson")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Pearson r = {r:.2f}" if math.isfinite(r) else "Pearson r: too few runs")
    ax.grid(alpha=0.3)
    return r


def figure_rloss_vs_flatness(runs: Sequence[RunResults]):
    """Stutz et al. 2021, Fig. 1: test RLoss against three flatness measures, with Pearson correlations."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FLATNESS_PANELS), figsize=(5 * len(FLATNESS_PANELS), 4.2))
    correlations = {}
    for ax, (key, label) in zip(axes, FLATNESS_PANELS):
        correlations[key] = _scatter(ax, runs, key, lambda run: run.get(TEST_RLOSS_PGD), label, "test RLoss (PGD)")
    fig.suptitle("Robust loss against flatness (one point per run)")
    fig.tight_layout()
    return fig, correlations


def figure_gap_vs_flatness(runs: Sequence[RunResults]):
    """Robust generalisation gap (test - train RLoss) against average-case flatness in RLoss."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    r = _scatter(ax, runs, FLATNESS_AVG_RLOSS,
                 lambda run: run.get(TEST_RLOSS_PGD) - run.get(TEST_RLOSS_PGD_TRAIN),
                 "average-case flatness in RLoss", "RLoss gap (test - train)")
    fig.tight_layout()
    return fig, r


def epoch_pairs(run: RunResults, y_tag: str = VAL_RLOSS,
                x_tag: str = FLATNESS_AVG_RLOSS) -> List[Tuple[float, float]]:
    """(flatness, RLoss) per epoch where both were logged at the same step.

    The first value per step is the epoch's: a test after fit logs its own flatness (with the
    paper's larger settings) at the step of the last epoch, after it.
    """
    ys = dict(run.curves.get(y_tag, []))
    pairs, seen = [], set()
    for step, x in run.curves.get(x_tag, []):
        if step in ys and step not in seen:
            seen.add(step)
            pairs.append((x, ys[step]))
    return pairs


def figure_flatness_over_epochs(runs: Sequence[RunResults]):
    """Stutz et al. 2021, Fig. 5: per run, held-out RLoss against flatness over epochs, early (blue) to late (red)."""
    import matplotlib.pyplot as plt

    with_curves = [run for run in runs if epoch_pairs(run)]
    columns = max(1, min(4, len(with_curves)))
    rows = max(1, math.ceil(len(with_curves) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, with_curves):
        pairs = np.array(epoch_pairs(run))
        ax.set_visible(True)
        ax.plot(pairs[:, 0], pairs[:, 1], color="0.8", linewidth=0.8, zorder=1)
        ax.scatter(pairs[:, 0], pairs[:, 1], c=np.linspace(0, 1, len(pairs)), cmap="coolwarm", s=18, zorder=2)
        ax.set_title(run.name, fontsize=9)
        ax.set_xlabel("avg. flatness in RLoss")
        ax.set_ylabel("held-out RLoss")
        ax.grid(alpha=0.3)
    fig.suptitle("RLoss against flatness during training (blue: early, red: late)")
    fig.tight_layout()
    return fig


def make_report(run_dirs: Sequence[str], out: str, axes: Optional[Sequence[str]] = None, resamples: int = 1000,
                confidence: float = 0.95, seed: int = 0) -> Dict[str, object]:
    """Write the tables and figures for ``run_dirs`` into ``out``; returns paths and correlations.

    Args:
        run_dirs: run directories (with ``metrics.json``).
        out: directory of the report.
        axes: hyper-parameters of the granulated Kendall coefficient
            (:func:`~lit_robust.study.measures_report.write_measure_report`); None: those that vary across the runs.
        resamples: bootstrap draws per interval of ``measures.md``.
        confidence: the intervals' coverage.
        seed: seed of the bootstrap draws.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    check_bootstrap(resamples, confidence)
    runs = [load_run(path) for path in run_dirs]
    check_directory("out", out)
    models = measured_models(runs)
    if axes is not None:
        axes = resolve_axes(axes, [model.hyperparameters for model in models])
    os.makedirs(out, exist_ok=True)
    md_path, csv_path = write_tables(runs, out)
    measures = write_measure_report(models, out, axes, resamples, confidence, seed)
    method_md, method_csv = write_method_tables(runs, out)
    fig1, correlations = figure_rloss_vs_flatness(runs)
    fig5 = figure_flatness_over_epochs(runs)
    gap, gap_r = figure_gap_vs_flatness(runs)
    figures = {"fig1_rloss_vs_flatness": fig1, "fig5_flatness_over_epochs": fig5, "gap_vs_flatness": gap,
               "measures_ranking": measures["figure"]}
    paths = {}
    writer = SummaryWriter(out)
    with open(measures["measures_md"]) as f:
        writer.add_text("report/measures", f.read())
    for name, fig in figures.items():
        paths[name] = os.path.join(out, name + ".png")
        fig.savefig(paths[name], dpi=120)
        writer.add_figure(f"report/{name}", fig, close=False)
        plt.close(fig)
    writer.close()
    summary = {"runs": [run.name for run in runs], "table_md": md_path, "table_csv": csv_path, "figures": paths,
               "measures_md": measures["measures_md"], "measures_csv": measures["measures_csv"],
               "axes": measures["axes"],
               "table_by_method_md": method_md, "table_by_method_csv": method_csv,
               "pearson": {**{f"{TEST_RLOSS_PGD} vs {k}": v for k, v in correlations.items()},
                           "rloss gap vs flatness/avg_rloss": gap_r}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_robust.study.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="TensorBoard log directories of tested runs (with metrics.json)")
    parser.add_argument("--out", required=True, help="directory for the tables and figures")
    add_statistics_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = make_report(args.run_dirs, args.out, args.axes, args.resamples, args.confidence, args.seed)
    except (FileNotFoundError, ConfigurationError) as error:
        parser.exit(2, f"error: {error}\n")
    with open(summary["table_md"]) as f:
        log.info(f.read())
    with open(summary["measures_md"]) as f:
        log.info("Correlation of each measure with robust generalisation:\n" + f.read())
    for name, r in summary["pearson"].items():
        log.info(f"Pearson r, {name}: {r:.3f}")
    log.info(f"Report written to {args.out}")


if __name__ == "__main__":
    main()
