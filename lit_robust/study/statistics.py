"""How well a measure predicts robust generalisation over a set of models: rank and linear correlations with
bootstrap confidence intervals, and the granulated Kendall coefficient.

The models may be runs of a study or any zoo: each is a :class:`MeasuredModel` with its measures, its
targets (what the measures should predict: test RLoss, the RLoss gap, ...) and the hyper-parameters that
produced it. The correlations are scipy's (``pearsonr``, ``spearmanr``, ``kendalltau``; Kendall's tau is
tau-b, which corrects for ties).

- Bootstrap interval (percentile bootstrap over models): the models are drawn with replacement
  ``resamples`` times (``numpy.random.default_rng(seed)``, so that an interval is reproducible), the
  correlation is computed on each draw, and the interval is the ``(1 - confidence) / 2`` and
  ``(1 + confidence) / 2`` quantiles of those values. A draw in which the measure or the target is
  constant (for instance the same model drawn every time, or tied values) has no correlation; such
  draws are left out and counted (:attr:`Estimate.degenerate`), and an interval without any defined
  draw is NaN (an empty cell in the tables).
- Granulated Kendall coefficient (Jiang et al. 2020, "Fantastic generalization measures and where to find
  them", Sec. 4): for a hyper-parameter axis ``i``, the models are grouped by every other recorded
  hyper-parameter; within each group only axis ``i`` varies. ``psi_i`` is the mean of Kendall's tau over
  the groups, and ``Psi`` the mean of ``psi_i`` over the axes. Jiang et al. write tau without ties (tau-a);
  with ties this uses tau-b, as the plain Kendall column does (without ties the two are equal). A group of one
  model, or one in which the measure or the target does not vary, has no tau and is left out of the mean;
  an axis without any such group has ``psi_i`` NaN and is left out of ``Psi``.
- Interval of the granulated coefficient (percentile bootstrap over groups): ``psi_i`` is a mean over
  groups, so its draws resample the groups of axis ``i`` (their taus) with replacement; a draw of ``Psi``
  averages one such draw per axis. The models of one group share every other setting, so drawing models
  would break the groups apart; drawing groups keeps each tau as it is. An axis with fewer than two groups
  has no interval (its spread over groups is unknown), and ``Psi`` then has none either.
"""

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from lit_robust.errors import check

KINDS = ("Pearson", "Spearman", "Kendall")
# fewer models than this give no plain correlation: two points always correlate at +-1
MINIMUM_MODELS = 3


@dataclass
class MeasuredModel:
    """One model of a study or a zoo.

    Args:
        name: how the tables name it.
        measures: measure name -> value (NaN or missing where not measured).
        targets: target name -> value (test RLoss, RLoss gap, ...).
        hyperparameters: the settings that produced the model (for the granulated Kendall coefficient).
    """

    name: str
    measures: Dict[str, float]
    targets: Dict[str, float]
    hyperparameters: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Estimate:
    """A correlation over the models and its bootstrap interval.

    Args:
        value: the correlation over all models with both values (NaN where undefined).
        low: lower end of the bootstrap interval.
        high: upper end of the bootstrap interval.
        degenerate: bootstrap draws left out because the measure or the target was constant in them.
    """

    value: float
    low: float = math.nan
    high: float = math.nan
    degenerate: int = 0


@dataclass
class MeasureStatistics:
    """Every statistic of one measure.

    Args:
        measure: the measure's name.
        models: models with a finite value of the measure.
        correlations: (target, kind) -> :class:`Estimate`, kind one of :data:`KINDS`.
        granulated: target -> axis -> ``psi_i`` and ``"Psi"`` -> their mean, each an :class:`Estimate` with its
            interval over groups.
    """

    measure: str
    models: int
    correlations: Dict[Tuple[str, str], Estimate]
    granulated: Dict[str, Dict[str, Estimate]]


def finite_pairs(x: Sequence[float], y: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """The pairs of ``x`` and ``y`` where both are finite numbers."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


FLAT_TOLERANCE = 1e-6
"""A model whose every measure is within this of 0 is reported by :func:`flat_models`."""


def flat_models(models: Sequence[MeasuredModel], tolerance: float = FLAT_TOLERANCE) -> List[str]:
    """The models whose every measured value is 0 (within ``tolerance``): no weight perturbation that was
    measured changed their loss, as for a network collapsed to a constant prediction. Such models are
    measured as the flattest of all whatever they generalise like, and a few of them can dominate every
    correlation; the report names them (they stay in the statistics: which models to study is the user's
    choice)."""
    flat = []
    for model in models:
        values = [v for v in model.measures.values() if v is not None and math.isfinite(v)]
        if values and all(abs(v) <= tolerance for v in values):
            flat.append(model.name)
    return flat


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def _scipy(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    """scipy's correlation of ``kind``; NaN where it is undefined (a constant input)."""
    if len(x) < 2 or _constant(x) or _constant(y):
        return math.nan
    function = {"Pearson": stats.pearsonr, "Spearman": stats.spearmanr, "Kendall": stats.kendalltau}[kind]
    return float(function(x, y).statistic)


def correlation(x: Sequence[float], y: Sequence[float], kind: str = "Pearson") -> float:
    """Pearson, Spearman or Kendall (tau-b) correlation of the finite pairs of ``x`` and ``y``.

    Args:
        x: the measure, one value per model.
        y: the target, one value per model.
        kind: one of :data:`KINDS`.

    Returns:
        The correlation; NaN with fewer than :data:`MINIMUM_MODELS` pairs or without spread.
    """
    check(kind in KINDS, "kind", kind, "one of " + ", ".join(KINDS))
    x, y = finite_pairs(x, y)
    return _scipy(kind, x, y) if len(x) >= MINIMUM_MODELS else math.nan


def _resampled(kind: str, x: np.ndarray, y: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The correlation of ``kind`` on each row of ``draws`` (indices of models); NaN on a constant draw."""
    xs, ys = x[draws], y[draws]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        if kind == "Kendall":  # the p-value's method does not change tau; the asymptotic one is the cheapest
            return np.asarray(stats.kendalltau(xs, ys, axis=1, method="asymptotic").statistic, dtype=float)
        if kind == "Spearman":  # Spearman's rho is Pearson's r of the ranks (ties get their mean rank)
            xs, ys = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
        return np.asarray(stats.pearsonr(xs, ys, axis=1).statistic, dtype=float)


def check_bootstrap(resamples: int, confidence: float) -> None:
    """One error for a number of resamples that is not a positive integer or a confidence outside (0, 1)."""
    check(isinstance(resamples, int) and not isinstance(resamples, bool) and resamples >= 1,
          "resamples", resamples, "an integer >= 1")
    check(isinstance(confidence, float) and 0.0 < confidence < 1.0, "confidence", confidence,
          "a number between 0 and 1 (e.g. 0.95)")


def bootstrap(x: Sequence[float], y: Sequence[float], kind: str = "Pearson", resamples: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> Estimate:
    """A correlation with its percentile-bootstrap interval over models (see the module's docstring).

    Args:
        x: the measure, one value per model.
        y: the target, one value per model.
        kind: one of :data:`KINDS`.
        resamples: how many times the models are drawn with replacement.
        confidence: the interval's coverage.
        seed: seed of the draws (the same seed gives the same interval).

    Returns:
        The :class:`Estimate`; NaN throughout with fewer than :data:`MINIMUM_MODELS` models.
    """
    check_bootstrap(resamples, confidence)
    value = correlation(x, y, kind)
    x, y = finite_pairs(x, y)
    if math.isnan(value):
        return Estimate(value)
    draws = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    values = _resampled(kind, x, y, draws)
    defined = values[np.isfinite(values)]
    if not len(defined):
        return Estimate(value, degenerate=resamples)
    low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Estimate(value, float(low), float(high), resamples - len(defined))


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varying_hyperparameters(hyperparameters: Sequence[Mapping[str, Any]]) -> List[str]:
    """The hyper-parameters whose value is not the same in every model (missing counts as a value), sorted."""
    keys = sorted({key for settings in hyperparameters for key in settings})
    return [key for key in keys if len({_hashable(settings.get(key)) for settings in hyperparameters}) > 1]


def resolve_axes(names: Sequence[str], hyperparameters: Sequence[Mapping[str, Any]]) -> List[str]:
    """Hyper-parameter names as the user writes them -> the recorded names: a recorded name stands for
    itself, otherwise a name matches the one recorded name that ends in ``.<name>`` (``lr`` ->
    ``optimizer.lr``); an unknown or ambiguous name is one error that lists the candidates."""
    recorded = sorted({key for settings in hyperparameters for key in settings})
    resolved = []
    for name in names:
        matches = [name] if name in recorded else [key for key in recorded if key.endswith("." + name)]
        check(len(matches) == 1, "axes", name,
              (f"one of the recorded hyper-parameters it matches: {', '.join(matches)}" if matches else
               "a recorded hyper-parameter (or the end of one after a dot): " + (", ".join(recorded) or "none")))
        resolved.append(matches[0])
    return resolved


def group_taus(x: Sequence[float], y: Sequence[float], hyperparameters: Sequence[Mapping[str, Any]],
               axes: Sequence[str]) -> Dict[str, np.ndarray]:
    """Per axis, Kendall's tau of every group of models that differ only along it (the groups whose tau is
    defined; see the module's docstring).

    Args:
        x: the measure, one value per model (models without a finite value and target are left out).
        y: the target, one value per model.
        hyperparameters: per model, its hyper-parameters (name -> value; a missing one counts as its own value).
        axes: the hyper-parameters to vary, one at a time.
    """
    check(len(hyperparameters) == len(x) == len(y), "hyperparameters", f"{len(hyperparameters)} models",
          f"one mapping per model ({len(x)} measure values, {len(y)} targets)")
    recorded = {key for settings in hyperparameters for key in settings}
    for axis in axes:
        check(axis in recorded, "axes", axis, "a recorded hyper-parameter: " + ", ".join(sorted(recorded)))
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    kept = [i for i in range(len(x)) if math.isfinite(x[i]) and math.isfinite(y[i])]
    keys = sorted({key for i in kept for key in hyperparameters[i]})
    result: Dict[str, np.ndarray] = {}
    for axis in axes:
        groups: Dict[Tuple[str, ...], List[int]] = {}
        for i in kept:
            others = tuple(_hashable(hyperparameters[i].get(key)) for key in keys if key != axis)
            groups.setdefault(others, []).append(i)
        taus = [_scipy("Kendall", x[group], y[group]) for group in groups.values() if len(group) > 1]
        result[axis] = np.array([tau for tau in taus if math.isfinite(tau)], dtype=float)
    return result


def granulated_kendall(x: Sequence[float], y: Sequence[float], hyperparameters: Sequence[Mapping[str, Any]],
                       axes: Sequence[str]) -> Dict[str, float]:
    """Jiang et al.'s (2020, Sec. 4) granulated Kendall coefficient ``psi_i`` per axis, and their mean ``Psi``.

    Args: those of :func:`group_taus`.

    Returns:
        ``{axis: psi_i, ..., "Psi": mean over the axes}`` (see the module's docstring for the groups that are
        left out).
    """
    return {name: estimate.value for name, estimate in
            granulated_bootstrap(group_taus(x, y, hyperparameters, axes), resamples=None).items()}


def granulated_bootstrap(taus: Mapping[str, np.ndarray], resamples: Optional[int] = 1000, confidence: float = 0.95,
                         seed: int = 0) -> Dict[str, Estimate]:
    """``psi_i`` per axis and ``Psi`` with their percentile-bootstrap intervals over groups (module docstring).

    Args:
        taus: per axis, the taus of its groups (:func:`group_taus`).
        resamples: draws of the groups per interval; None: the values alone, without intervals.
        confidence: the intervals' coverage.
        seed: seed of the draws (the same seed gives the same intervals).
    """
    rng = np.random.default_rng(seed)
    result: Dict[str, Estimate] = {}
    draws: List[Optional[np.ndarray]] = []
    for axis, values in taus.items():
        if not len(values):
            result[axis] = Estimate(math.nan)
            continue
        estimate = Estimate(float(np.mean(values)))
        if resamples is not None and len(values) > 1:
            means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
            estimate.low, estimate.high = (float(q) for q in np.quantile(means, [(1 - confidence) / 2,
                                                                                 (1 + confidence) / 2]))
            draws.append(means)
        else:
            draws.append(None)
        result[axis] = estimate
    defined = [result[axis].value for axis in taus if math.isfinite(result[axis].value)]
    psi = Estimate(float(np.mean(defined)) if defined else math.nan)
    if resamples is not None and draws and all(d is not None for d in draws):
        psi.low, psi.high = (float(q) for q in np.quantile(np.mean(draws, axis=0), [(1 - confidence) / 2,
                                                                                  (1 + confidence) / 2]))
    result["Psi"] = psi
    return result


def measure_statistics(models: Sequence[MeasuredModel], axes: Optional[Sequence[str]] = None,
                       resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> List[MeasureStatistics]:
    """Every statistic of every measure of ``models`` against every target.

    Args:
        models: the models with their measures, targets and hyper-parameters.
        axes: the hyper-parameters of the granulated Kendall coefficient; None: those that vary across the
            models (:func:`varying_hyperparameters`).
        resamples: bootstrap draws per interval.
        confidence: the intervals' coverage.
        seed: seed of the bootstrap draws.

    Returns:
        One :class:`MeasureStatistics` per measure, sorted by name.
    """
    check_bootstrap(resamples, confidence)
    settings = [model.hyperparameters for model in models]
    axes = varying_hyperparameters(settings) if axes is None else list(axes)
    targets = list(dict.fromkeys(name for model in models for name in model.targets))
    result = []
    for measure in sorted({name for model in models for name in model.measures}):
        x = [model.measures.get(measure, math.nan) for model in models]
        correlations, granulated = {}, {}
        for target in targets:
            y = [model.targets.get(target, math.nan) for model in models]
            for kind in KINDS:
                correlations[(target, kind)] = bootstrap(x, y, kind, resamples, confidence, seed)
            granulated[target] = granulated_bootstrap(group_taus(x, y, settings, axes), resamples, confidence,
                                                      seed)
        result.append(MeasureStatistics(measure, int(np.isfinite(np.asarray(x, dtype=float)).sum()),
                                        correlations, granulated))
    return result
