"""``measures.md`` / ``measures.csv`` and ``measures_ranking.png``: how well each measure predicts robust
generalisation over a set of models (a study's runs or a measured zoo).

For every ``flatness/*`` measure of the models: its Pearson, Spearman and Kendall correlation with test RLoss,
the RLoss gap (test - train RLoss), test RErr and the RErr gap (test - train RErr), each with a bootstrap
confidence interval over the models, and the granulated Kendall coefficient per hyper-parameter axis and its mean
Psi (Jiang et al. 2020, Sec. 4; the computations are :mod:`lit_robust.study.statistics`). A model whose every
measure is 0 (e.g. collapsed to a constant prediction) is named in a warning first. The figure ranks the measures
by Kendall's tau and by Psi with their intervals.
"""

import argparse
import csv
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lit_robust.metric_names import FLATNESS, TEST_RERR_PGD, TEST_RERR_PGD_TRAIN, TEST_RLOSS_PGD, TEST_RLOSS_PGD_TRAIN
from lit_robust.study.runs import RunResults, recorded_hyperparameters
from lit_robust.study.statistics import (
    KINDS,
    Estimate,
    MeasuredModel,
    MeasureStatistics,
    check_bootstrap,
    flat_models,
    measure_statistics,
    resolve_axes,
    varying_hyperparameters,
)
from lit_robust.study.tables import format_value, markdown_table

log = logging.getLogger(__name__)


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
            row += [format_value(estimate.value), format_value(estimate.low), format_value(estimate.high)]
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


def degenerate_line(statistics: Sequence[MeasureStatistics], resamples: int) -> str:
    """The log line naming, per measure, how many of its correlations' intervals left out bootstrap draws in
    which the measure or the target was constant, and how many draws at most; ``""`` when none did."""
    parts = []
    for s in statistics:
        counts = [e.degenerate for e in s.correlations.values() if e.degenerate]
        if counts:
            parts.append(f"{s.measure} ({len(counts)} of {len(s.correlations)}, up to {max(counts)} draws)")
    if not parts:
        return ""
    return (f"bootstrap draws with a constant measure or target were left out of the intervals (of {resamples} "
            f"draws each) of: " + ", ".join(parts))


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
    degenerate = degenerate_line(statistics, resamples)
    if degenerate:
        log.info(degenerate)
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


def add_statistics_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``measures.md``: the axes of the granulated Kendall coefficient and the bootstrap."""
    parser.add_argument("--axes", nargs="+", default=None, metavar="NAME",
                        help="hyper-parameters of the granulated Kendall coefficient, as recorded in the runs' "
                             "config.yaml (optimizer.lr) or by their last part (lr); default: those that vary")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval")
    parser.add_argument("--confidence", type=float, default=0.95, help="coverage of the bootstrap intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
