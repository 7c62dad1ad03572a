"""Many runs -> the paper's table and plots: robust generalisation against flatness of the robust loss.

    python -m lit_robust.report RUN_DIRS... --out DIR

Each run directory is a TensorBoard log directory written by ``train.py`` (``metrics.json`` from
its test, event files with the per-epoch scalars, ``config.yaml``). The report writes

- ``table.md`` / ``table.csv``: papers/001 Table D's columns (Err, RErr PGD and AutoAttack on test
  and train, RErr after early stopping (held-out), average/worst flatness in Loss and RLoss), sorted by test RErr;
- ``fig1_rloss_vs_flatness.png``: test RLoss against average-case flatness in RLoss, worst-case
  flatness in RLoss and average-case flatness in clean Loss (papers/003 Fig. 1, papers/001 Sec. D),
  one point per run with the Pearson correlation in each title;
- ``fig5_flatness_over_epochs.png``: per run, held-out RLoss against flatness over the epochs,
  coloured from early to late (papers/003 Fig. 5);
- ``gap_vs_flatness.png``: the robust generalisation gap (test - train RLoss) against flatness;
- ``measures.md`` / ``measures.csv``: for every ``flatness/*`` measure present in the runs, its
  Pearson and Kendall rank correlation over the runs with test RLoss, the RLoss gap (test - train
  RLoss), test RErr and the RErr gap (test - train RErr);
- ``table_by_method.md`` / ``table_by_method.csv``: the same columns per method, as mean and
  standard deviation over its seeds (runs named ``<method>_seed<S>``, as the study names them);

and logs the same figures to TensorBoard in ``DIR``.
"""

import argparse
import csv
import glob
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lit_robust.errors import ConfigurationError, check, check_readable_file, one_line_error
from lit_robust.trainer_checks import check_directory

log = logging.getLogger(__name__)

# (column title, metrics.json key). RErr after early stopping is the best held-out robust error
# of RobustEarlyStopping; a run that restored the best weights (restore_best_weights) also reports
# the early-stopped model in its test columns.
COLUMNS: List[Tuple[str, str]] = [
    ("Err (test)", "test/err"),
    ("RErr PGD (test)", "test/rerr_pgd"),
    ("RErr AA (test)", "test/rerr_aa"),
    ("RErr PGD (train)", "test/rerr_pgd_train"),
    ("RErr AA (train)", "test/rerr_aa_train"),
    ("RErr (early stop, held-out)", "early_stopping/best_rerr"),
    ("RLoss (test)", "test/rloss_pgd"),
    ("RLoss (train)", "test/rloss_pgd_train"),
    ("Avg Loss", "flatness/avg_loss"),
    ("Worst Loss", "flatness/worst_loss"),
    ("Avg RLoss", "flatness/avg_rloss"),
    ("Worst RLoss", "flatness/worst_rloss"),
    ("Held-out RLoss min", "robust_overfitting/best_rloss"),
    ("Min epoch", "robust_overfitting/best_epoch"),
    ("Rise (held-out RLoss end - min)", "robust_overfitting/rise_absolute"),
]
# metrics computed from others: the rise of the held-out RLoss after its minimum, in loss units
DERIVED = {"robust_overfitting/rise_absolute": ("robust_overfitting/final_rloss", "robust_overfitting/best_rloss")}
FLATNESS_PANELS = [("flatness/avg_rloss", "average-case flatness in RLoss"),
                   ("flatness/worst_rloss", "worst-case flatness in RLoss"),
                   ("flatness/avg_loss", "average-case flatness in (clean) Loss")]


@dataclass
class Run:
    """One run: its label, its final metrics and its per-epoch scalars."""

    name: str
    path: str
    metrics: Dict[str, float]
    curves: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)

    def get(self, key: str) -> float:
        if key in DERIVED and key not in self.metrics:
            final, best = (self.get(part) for part in DERIVED[key])
            return final - best
        value = self.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    @property
    def test_rerr(self) -> float:
        """RErr used for sorting: AutoAttack where measured, PGD otherwise."""
        aa = self.get("test/rerr_aa")
        return aa if not math.isnan(aa) else self.get("test/rerr_pgd")


def run_label(path: str) -> str:
    """``logs/digits_trades/version_0`` -> ``digits_trades`` (``/version_N`` dropped)."""
    path = os.path.normpath(path)
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base.startswith("version_") else base


def read_scalars(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in ``path``, as ``tag -> [(step, value), ...]``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not glob.glob(os.path.join(path, "events.out.tfevents.*")):
        return {}
    events = EventAccumulator(path, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def load_run(path: str) -> Run:
    """Read a run directory; a missing ``metrics.json`` is an error naming the directory."""
    check(not os.path.exists(path) or os.path.isdir(path), "run_dirs", path,
          "run directories written by train.py (with metrics.json)")
    metrics_path = os.path.join(path, "metrics.json")
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"{path}: no metrics.json (run `train.py test` for this run first)")
    check_readable_file(metrics_path, "run_dirs", "run directories whose metrics.json this process can read")
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"run_dirs={path!r} is not allowed: its metrics.json is not JSON "
                                 f"({one_line_error(error)}); run_dirs must be run directories written by "
                                 f"train.py.") from None
    check(isinstance(metrics, dict), "run_dirs", path, "run directories whose metrics.json holds an object of "
          "metrics (as train.py writes it)")
    return Run(name=run_label(path), path=path, metrics=metrics, curves=read_scalars(path))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the finite pairs; NaN with fewer than 3 pairs or no spread."""
    pairs = np.array([(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)], dtype=float)
    if len(pairs) < 3 or pairs[:, 0].std() == 0 or pairs[:, 1].std() == 0:
        return math.nan
    return float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])


def _format(value: float, key: str = "") -> str:
    if math.isnan(value):
        return ""
    return f"{value:.0f}" if key.endswith("epoch") else f"{value:.3f}"


def table_rows(runs: Sequence[Run]) -> List[List[str]]:
    """Header and one row per run, sorted by test RErr (runs without it last)."""
    ordered = sorted(runs, key=lambda r: (math.isnan(r.test_rerr), r.test_rerr))
    header = ["Method"] + [title for title, _ in COLUMNS]
    return [header] + [[run.name] + [_format(run.get(key), key) for _, key in COLUMNS] for run in ordered]


def write_markdown(rows: Sequence[Sequence[str]], path: str) -> None:
    """``rows`` (the first is the header) as a Markdown table in ``path``."""
    with open(path, "w") as f:
        f.write("| " + " | ".join(rows[0]) + " |\n")
        f.write("|" + "---|" * len(rows[0]) + "\n")
        for row in rows[1:]:
            f.write("| " + " | ".join(row) + " |\n")


def write_table(rows: Sequence[Sequence[str]], out: str, name: str) -> Tuple[str, str]:
    """``rows`` as ``<name>.md`` and ``<name>.csv`` in ``out``."""
    csv_path, md_path = os.path.join(out, f"{name}.csv"), os.path.join(out, f"{name}.md")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    write_markdown(rows, md_path)
    return md_path, csv_path


def write_tables(runs: Sequence[Run], out: str) -> Tuple[str, str]:
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


def method_statistics(runs: Sequence[Run]) -> Dict[str, Dict[str, object]]:
    """Per method: its runs (seeds) and, per column key, the mean and std over them."""
    groups: Dict[str, List[Run]] = {}
    for run in runs:
        groups.setdefault(method_of(run.name), []).append(run)
    return {method: {"runs": [run.name for run in group],
                     "columns": {key: mean_and_std([run.get(key) for run in group]) for _, key in COLUMNS}}
            for method, group in groups.items()}


def method_rows(runs: Sequence[Run]) -> List[List[str]]:
    """Header and one row per method with ``mean ± std`` over its seeds, sorted by mean test RErr."""
    statistics = method_statistics(runs)

    def sort_key(method: str) -> Tuple[bool, float]:
        columns = statistics[method]["columns"]
        aa, pgd = columns["test/rerr_aa"][0], columns["test/rerr_pgd"][0]
        value = aa if math.isfinite(aa) else pgd
        return math.isnan(value), value

    rows = [["Method", "Seeds"] + [title for title, _ in COLUMNS]]
    for method in sorted(statistics, key=sort_key):
        cells = []
        for _, key in COLUMNS:
            mean, std = statistics[method]["columns"][key]
            cells.append(_format(mean) if math.isnan(std) or math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
        rows.append([method, str(len(statistics[method]["runs"]))] + cells)
    return rows


def write_method_tables(runs: Sequence[Run], out: str) -> Tuple[str, str]:
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
                            + [_format(v) for _, key in COLUMNS for v in columns[key]])
    return md_path, csv_path


def _scatter(ax, runs: Sequence[Run], x_key: str, y_of, xlabel: str, ylabel: str) -> float:
    xs = [run.get(x_key) for run in runs]
    ys = [y_of(run) for run in runs]
    for run, x, y in zip(runs, xs, ys):
        if math.isfinite(x) and math.isfinite(y):
            ax.scatter(x, y, s=30)
            ax.annotate(run.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    r = pearson(xs, ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Pearson r = {r:.2f}" if math.isfinite(r) else "Pearson r: too few runs")
    ax.grid(alpha=0.3)
    return r


def figure_rloss_vs_flatness(runs: Sequence[Run]):
    """papers/003 Fig. 1: test RLoss against three flatness measures, with Pearson correlations."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FLATNESS_PANELS), figsize=(5 * len(FLATNESS_PANELS), 4.2))
    correlations = {}
    for ax, (key, label) in zip(axes, FLATNESS_PANELS):
        correlations[key] = _scatter(ax, runs, key, lambda run: run.get("test/rloss_pgd"), label, "test RLoss (PGD)")
    fig.suptitle("Robust loss against flatness (one point per run)")
    fig.tight_layout()
    return fig, correlations


def figure_gap_vs_flatness(runs: Sequence[Run]):
    """Robust generalisation gap (test - train RLoss) against average-case flatness in RLoss."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    r = _scatter(ax, runs, "flatness/avg_rloss",
                 lambda run: run.get("test/rloss_pgd") - run.get("test/rloss_pgd_train"),
                 "average-case flatness in RLoss", "RLoss gap (test - train)")
    fig.tight_layout()
    return fig, r


def epoch_pairs(run: Run, y_tag: str = "val/rloss", x_tag: str = "flatness/avg_rloss") -> List[Tuple[float, float]]:
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


def figure_flatness_over_epochs(runs: Sequence[Run]):
    """papers/003 Fig. 5: per run, held-out RLoss against flatness over epochs, early (blue) to late (red)."""
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


# (column title, the quantity the measures are correlated with)
TARGETS = [
    ("RLoss (test)", lambda run: run.get("test/rloss_pgd")),
    ("RLoss gap", lambda run: run.get("test/rloss_pgd") - run.get("test/rloss_pgd_train")),
    ("RErr (test)", lambda run: run.get("test/rerr_pgd")),
    ("RErr gap", lambda run: run.get("test/rerr_pgd") - run.get("test/rerr_pgd_train")),
]


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's rank correlation tau-b of the finite pairs; NaN with fewer than 3 pairs or no spread."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            dx, dy = pairs[i][0] - pairs[j][0], pairs[i][1] - pairs[j][1]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator > 0 else math.nan


def measure_names(runs: Sequence[Run]) -> List[str]:
    """Every ``flatness/*`` measure with a value in some run (standard deviations left out), sorted."""
    return sorted({key for run in runs for key, value in run.metrics.items()
                   if key.startswith("flatness/") and "_std" not in key and isinstance(value, (int, float))})


def measure_rows(runs: Sequence[Run]) -> List[List[str]]:
    """Header and one row per measure: its Pearson and Kendall correlation with each of :data:`TARGETS`."""
    header = ["Measure", "Runs"] + [f"{kind} {title}" for title, _ in TARGETS for kind in ("Pearson", "Kendall")]
    rows = [header]
    for name in measure_names(runs):
        values = [run.get(name) for run in runs]
        row = [name, str(sum(math.isfinite(v) for v in values))]
        for _, target in TARGETS:
            ys = [target(run) for run in runs]
            row += [_format(pearson(values, ys)), _format(kendall(values, ys))]
        rows.append(row)
    return rows


def write_measure_tables(runs: Sequence[Run], out: str) -> Tuple[str, str]:
    """``measures.md`` and ``measures.csv`` in ``out``: how each measure correlates with robust generalisation."""
    return write_table(measure_rows(runs), out, "measures")


def make_report(run_dirs: Sequence[str], out: str) -> Dict[str, object]:
    """Write the tables and figures for ``run_dirs`` into ``out``; returns paths and correlations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    runs = [load_run(path) for path in run_dirs]
    check_directory("out", out)
    os.makedirs(out, exist_ok=True)
    md_path, csv_path = write_tables(runs, out)
    measures_md, measures_csv = write_measure_tables(runs, out)
    method_md, method_csv = write_method_tables(runs, out)
    fig1, correlations = figure_rloss_vs_flatness(runs)
    fig5 = figure_flatness_over_epochs(runs)
    gap, gap_r = figure_gap_vs_flatness(runs)
    figures = {"fig1_rloss_vs_flatness": fig1, "fig5_flatness_over_epochs": fig5, "gap_vs_flatness": gap}
    paths = {}
    writer = SummaryWriter(out)
    for name, fig in figures.items():
        paths[name] = os.path.join(out, name + ".png")
        fig.savefig(paths[name], dpi=120)
        writer.add_figure(f"report/{name}", fig, close=False)
        plt.close(fig)
    writer.close()
    summary = {"runs": [run.name for run in runs], "table_md": md_path, "table_csv": csv_path, "figures": paths,
               "measures_md": measures_md, "measures_csv": measures_csv,
               "table_by_method_md": method_md, "table_by_method_csv": method_csv,
               "pearson": {**{f"test/rloss_pgd vs {k}": v for k, v in correlations.items()},
                           "rloss gap vs flatness/avg_rloss": gap_r}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_robust.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="TensorBoard log directories of tested runs (with metrics.json)")
    parser.add_argument("--out", required=True, help="directory for the tables and figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = make_report(args.run_dirs, args.out)
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
