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
- ``measures.md`` / ``measures.csv``: for every ``flatness/*`` measure present in the runs, its
  Pearson, Spearman and Kendall correlation over the runs with test RLoss, the RLoss gap (test - train
  RLoss), test RErr and the RErr gap (test - train RErr), each with a bootstrap confidence interval over
  the runs, and the granulated Kendall coefficient per hyper-parameter axis and its mean Psi (Jiang et
  al. 2020, Sec. 4; see :mod:`lit_robust.study.statistics`), the hyper-parameters read from each run's
  ``config.yaml`` (a model whose every measure is 0, e.g. collapsed to a constant prediction, is named
  in a warning first); ``measures_ranking.png``: the measures ranked by Kendall's tau and by Psi with
  their intervals;
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lit_robust.errors import ConfigurationError, check, check_readable_file, one_line_error
from lit_robust.metric_names import (
    EARLY_STOPPING_BEST_RERR,
    FLATNESS,
    FLATNESS_AVG_LOSS,
    FLATNESS_AVG_RLOSS,
    FLATNESS_WORST_LOSS,
    FLATNESS_WORST_RLOSS,
    ROBUST_OVERFITTING_BEST_EPOCH,
    ROBUST_OVERFITTING_BEST_RLOSS,
    ROBUST_OVERFITTING_FINAL_RLOSS,
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
from lit_robust.study.statistics import (
    KINDS,
    Estimate,
    MeasuredModel,
    MeasureStatistics,
    check_bootstrap,
    correlation,
    flat_models,
    measure_statistics,
    resolve_axes,
    varying_hyperparameters,
)
from lit_robust.callbacks.hparams_session import flatten
from lit_robust.cli.trainer_checks import check_directory

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
# metrics computed from others: the rise of the held-out RLoss after its minimum, in loss units
DERIVED = {ROBUST_OVERFITTING_RISE_ABSOLUTE: (ROBUST_OVERFITTING_FINAL_RLOSS, ROBUST_OVERFITTING_BEST_RLOSS)}
FLATNESS_PANELS = [(FLATNESS_AVG_RLOSS, "average-case flatness in RLoss"),
                   (FLATNESS_WORST_RLOSS, "worst-case flatness in RLoss"),
                   (FLATNESS_AVG_LOSS, "average-case flatness in (clean) Loss")]


@dataclass
class RunResults:
    """The results of one finished run: its label, its directory, its final metrics (``metrics.json``) and its
    per-epoch scalars (TensorBoard). A study's run before it has results is a :class:`lit_robust.study.runner.Run`."""

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
        aa = self.get(TEST_RERR_AA)
        return aa if not math.isnan(aa) else self.get(TEST_RERR_PGD)


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
    # tensorboard logs a line at INFO for every event file after the first (a run's test writes a second one):
    # hundreds of lines in a study's log, none of them the user's business
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    events = EventAccumulator(path, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def load_run(path: str) -> RunResults:
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
    return RunResults(name=run_label(path), path=path, metrics=metrics, curves=read_scalars(path))



def _format(value: float, key: str = "") -> str:
    if math.isnan(value):
        return ""
    return f"{value:.0f}" if key.endswith("epoch") else f"{value:.3f}"


def table_rows(runs: Sequence[RunResults]) -> List[List[str]]:
    """Header and one row per run, sorted by test RErr (runs without it last)."""
    ordered = sorted(runs, key=lambda r: (math.isnan(r.test_rerr), r.test_rerr))
    header = ["Method"] + [title for title, _ in COLUMNS]
    return [header] + [[run.name] + [_format(run.get(key), key) for _, key in COLUMNS] for run in ordered]


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first is the header) as a Markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"


def write_markdown(rows: Sequence[Sequence[str]], path: str) -> None:
    """``rows`` (the first is the header) as a Markdown table in ``path``."""
    with open(path, "w") as f:
        f.write(markdown_table(rows))


def write_table(rows: Sequence[Sequence[str]], out: str, name: str) -> Tuple[str, str]:
    """``rows`` as ``<name>.md`` and ``<name>.csv`` in ``out``."""
    csv_path, md_path = os.path.join(out, f"{name}.csv"), os.path.join(out, f"{name}.md")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    write_markdown(rows, md_path)
    return md_path, csv_path


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
            cells.append(_format(mean) if math.isnan(std) or math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
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
                            + [_format(v) for _, key in COLUMNS for v in columns[key]])
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


# (column title, the quantity the measures are correlated with)
TARGETS = [
    ("RLoss (test)", lambda run: run.get(TEST_RLOSS_PGD)),
    ("RLoss gap", lambda run: run.get(TEST_RLOSS_PGD) - run.get(TEST_RLOSS_PGD_TRAIN)),
    ("RErr (test)", lambda run: run.get(TEST_RERR_PGD)),
    ("RErr gap", lambda run: run.get(TEST_RERR_PGD) - run.get(TEST_RERR_PGD_TRAIN)),
]


def measure_names(runs: Sequence[RunResults]) -> List[str]:
    """Every ``flatness/*`` measure with a value in some run (standard deviations left out), sorted."""
    return sorted({key for run in runs for key, value in run.metrics.items()
                   if key.startswith(FLATNESS) and "_std" not in key and isinstance(value, (int, float))})


# run bookkeeping, not settings of the model: left out of a run's hyper-parameters
BOOKKEEPING = ("trainer.logger", "trainer.enable_progress_bar", "trainer.plugins", "trainer.default_root_dir",
               "ckpt_path", "weights_only")


def recorded_hyperparameters(path: str) -> Dict[str, Any]:
    """The settings a run directory records as dotted names -> values (``optimizer`` -> ``torch.optim.SGD``,
    ``optimizer.lr`` -> 0.05; :func:`~lit_robust.callbacks.hparams_session.flatten`): its ``config.yaml``
    (written by LightningCLI), else the module's ``hparams.yaml``; bookkeeping (:data:`BOOKKEEPING`) and empty
    settings left out; empty when neither file is there or readable."""
    import yaml

    for name in ("config.yaml", "hparams.yaml"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            try:
                with open(file) as f:
                    config = yaml.safe_load(f)
            except yaml.YAMLError:
                continue
            settings = flatten(config if isinstance(config, dict) else {}, separator=".")
            return {key: value for key, value in settings.items() if not key.startswith("_") and value != {}
                    and not any(key == b or key.startswith(b + ".") for b in BOOKKEEPING)}
    return {}


def measured_models(runs: Sequence[RunResults]) -> List[MeasuredModel]:
    """The runs as :class:`~lit_robust.study.statistics.MeasuredModel`: their ``flatness/*`` measures, the
    :data:`TARGETS` and the hyper-parameters their directories record."""
    names = measure_names(runs)
    return [MeasuredModel(run.name, {name: run.get(name) for name in names},
                          {title: target(run) for title, target in TARGETS}, recorded_hyperparameters(run.path))
            for run in runs]


def _cell(estimate: Estimate) -> str:
    if math.isnan(estimate.value):
        return ""
    interval = "" if math.isnan(estimate.low) else f" [{estimate.low:.2f}, {estimate.high:.2f}]"
    return f"{estimate.value:.3f}{interval}"


def targets_of(statistics: Sequence[MeasureStatistics]) -> List[str]:
    """The targets the measures were correlated with, in their order."""
    return list(dict.fromkeys(target for s in statistics for target, _ in s.correlations))


def measure_rows(statistics: Sequence[MeasureStatistics], axes: Sequence[str]) -> List[List[str]]:
    """Header and one row per measure (the CSV): per target, each correlation and its interval, the
    granulated Kendall coefficient per axis and Psi."""
    targets = targets_of(statistics)
    header = ["Measure", "Models"]
    for target in targets:
        header += [f"{kind} {target}{part}" for kind in KINDS for part in ("", " low", " high")]
    for target in targets:
        header += [f"{name}{part}" for name in [f"Granulated Kendall {target} {axis}" for axis in axes]
                   + [f"Psi {target}"] for part in ("", " low", " high")]
    rows = [header]
    for s in statistics:
        row = [s.measure, str(s.models)]
        estimates = [s.correlations[(target, kind)] for target in targets for kind in KINDS]
        estimates += [s.granulated[target][axis] for target in targets for axis in list(axes) + ["Psi"]]
        for estimate in estimates:
            row += [_format(estimate.value), _format(estimate.low), _format(estimate.high)]
        rows.append(row)
    return rows


def flat_warning(flat: Sequence[str]) -> str:
    """The line of ``measures.md`` (and the log) that names the models measured as perfectly flat."""
    return (f"{len(flat)} model(s) with every measure 0 (no measured weight perturbation changed their loss, as "
            f"for a network collapsed to a constant prediction; they count as the flattest whatever they "
            f"generalise like and can dominate the correlations): {', '.join(flat)}")


def measures_markdown(statistics: Sequence[MeasureStatistics], axes: Sequence[str], models: int,
                      resamples: int, confidence: float, seed: int, flat: Sequence[str] = ()) -> str:
    """``measures.md``: one table per target, each correlation with its interval, then psi per axis and Psi;
    first a warning naming the models in ``flat`` (:func:`~lit_robust.study.statistics.flat_models`)."""
    targets = targets_of(statistics)
    lines = [f"Correlation of each measure with robust generalisation over {models} models: Pearson, Spearman "
             f"and Kendall's tau-b (scipy.stats), each with its {confidence:.0%} percentile-bootstrap interval "
             f"over models ({resamples} resamples, seed {seed}); the granulated Kendall coefficient psi per "
             f"hyper-parameter axis and Psi, their mean (Jiang et al. 2020, Sec. 4), over the axes: "
             f"{', '.join(axes) or 'none'}, each with its bootstrap interval over the groups of models that "
             f"differ only along the axis.", ""]
    if flat:
        lines += [f"**Warning:** {flat_warning(flat)}.", ""]
    for target in targets:
        header = ["Measure", "Models", *KINDS, *(f"psi {axis}" for axis in axes), "Psi"]
        rows = [header] + [[s.measure, str(s.models)] + [_cell(s.correlations[(target, kind)]) for kind in KINDS]
                           + [_cell(s.granulated[target][axis]) for axis in list(axes) + ["Psi"]]
                           for s in statistics]
        lines += [f"## {target}", "", markdown_table(rows)]
    return "\n".join(lines)


RANKINGS = ("Kendall", "Psi")
"""The rows of the ranking figure: Kendall's tau over all models, and the granulated coefficient Psi."""


def _estimate(s: MeasureStatistics, target: str, kind: str) -> Estimate:
    return s.granulated[target]["Psi"] if kind == "Psi" else s.correlations[(target, kind)]


def figure_measure_ranking(statistics: Sequence[MeasureStatistics], kinds: Sequence[str] = RANKINGS):
    """The measures ranked by each of ``kinds`` (a correlation of :data:`KINDS` or ``"Psi"``) with each target,
    with the bootstrap intervals as horizontal error bars (a row per kind, a panel per target; measures
    without a value left out)."""
    import matplotlib.pyplot as plt

    targets = targets_of(statistics)
    height = 1.5 + 0.28 * max(1, len(statistics))
    columns = max(1, len(targets))
    fig, axes = plt.subplots(len(kinds), columns, figsize=(4.5 * columns, height * len(kinds)), squeeze=False)
    for row, kind in zip(axes, kinds):
        for ax, target in zip(row, targets):
            ranked = sorted((s for s in statistics if math.isfinite(_estimate(s, target, kind).value)),
                            key=lambda s: _estimate(s, target, kind).value)
            estimates = [_estimate(s, target, kind) for s in ranked]
            values = np.array([e.value for e in estimates])
            errors = np.array([[e.value - e.low, e.high - e.value] if math.isfinite(e.low) else [0.0, 0.0]
                               for e in estimates]).reshape(-1, 2).T
            ax.errorbar(values, np.arange(len(ranked)), xerr=errors, fmt="o", capsize=3, markersize=4)
            ax.set_yticks(np.arange(len(ranked)), [s.measure.removeprefix(FLATNESS) for s in ranked], fontsize=7)
            ax.axvline(0.0, color="0.6", linewidth=0.8)
            ax.set_xlim(-1.05, 1.05)
            ax.set_xlabel(f"{'granulated Kendall Psi' if kind == 'Psi' else kind} with {target}")
            ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Measures ranked by " + " and by ".join(kinds) + " (bars: bootstrap intervals; Psi's over groups)")
    fig.tight_layout()
    return fig


def write_measure_report(models: Sequence[MeasuredModel], out: str, axes: Optional[Sequence[str]] = None,
                         resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Dict[str, Any]:
    """``measures.md`` and ``measures.csv`` in ``out`` for any models (a study's runs or a zoo), and the
    ranking figure (not yet saved).

    Args:
        models: the models, each with its measures, targets and hyper-parameters.
        out: directory of the tables.
        axes: hyper-parameters of the granulated Kendall coefficient, as recorded or by the end of their
            recorded name (``lr`` for ``optimizer.lr``); None: those that vary across the models.
        resamples: bootstrap draws per interval.
        confidence: the intervals' coverage.
        seed: seed of the bootstrap draws.

    Returns:
        ``measures_md``, ``measures_csv``, ``axes`` (the recorded names), ``statistics`` and ``figure``.
    """
    check_bootstrap(resamples, confidence)
    settings = [model.hyperparameters for model in models]
    axes = varying_hyperparameters(settings) if axes is None else resolve_axes(axes, settings)
    statistics = measure_statistics(models, axes, resamples, confidence, seed)
    degenerate = sorted({f"{s.measure} ({kind}, {target})" for s in statistics
                         for (target, kind), e in s.correlations.items() if e.degenerate})
    if degenerate:
        log.info(f"bootstrap draws with a constant measure or target were left out of the intervals of: "
                 f"{', '.join(degenerate)}")
    flat = flat_models(models)
    if flat:
        log.warning(flat_warning(flat))
    md_path, csv_path = os.path.join(out, "measures.md"), os.path.join(out, "measures.csv")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(measure_rows(statistics, axes))
    with open(md_path, "w") as f:
        f.write(measures_markdown(statistics, axes, len(models), resamples, confidence, seed, flat))
    return {"measures_md": md_path, "measures_csv": csv_path, "axes": list(axes), "statistics": statistics,
            "figure": figure_measure_ranking(statistics)}


def make_report(run_dirs: Sequence[str], out: str, axes: Optional[Sequence[str]] = None, resamples: int = 1000,
                confidence: float = 0.95, seed: int = 0) -> Dict[str, object]:
    """Write the tables and figures for ``run_dirs`` into ``out``; returns paths and correlations.

    Args:
        run_dirs: run directories (with ``metrics.json``).
        out: directory of the report.
        axes: hyper-parameters of the granulated Kendall coefficient (:func:`write_measure_report`); None:
            those that vary across the runs.
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


def add_statistics_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``measures.md``: the axes of the granulated Kendall coefficient and the bootstrap."""
    parser.add_argument("--axes", nargs="+", default=None, metavar="NAME",
                        help="hyper-parameters of the granulated Kendall coefficient, as recorded in the runs' "
                             "config.yaml (optimizer.lr) or by their last part (lr); default: those that vary")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval")
    parser.add_argument("--confidence", type=float, default=0.95, help="coverage of the bootstrap intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")


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
