"""The statistics of measures over models against independent computations: scipy's correlations on fixed
data, the bootstrap redone as a plain loop, and the granulated Kendall coefficient worked out by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from lit_robust.errors import ConfigurationError
from lit_robust.study.statistics import (
    KINDS,
    MeasuredModel,
    bootstrap,
    correlation,
    granulated_kendall,
    measure_statistics,
    resolve_axes,
    varying_hyperparameters,
)

X = [0.3, 1.2, 0.7, 2.5, 1.9, 0.4, 1.1, float("nan"), 2.2, 1.2]
Y = [1.0, 1.4, 0.9, 2.0, 2.6, 1.1, 1.3, 5.0, 1.7, 0.8]
SCIPY = {"Pearson": stats.pearsonr, "Spearman": stats.spearmanr, "Kendall": stats.kendalltau}


@pytest.mark.parametrize("kind", KINDS)
def test_point_estimates_are_scipys_on_the_finite_pairs(kind):
    finite = [(a, b) for a, b in zip(X, Y) if math.isfinite(a)]
    expected = SCIPY[kind]([a for a, _ in finite], [b for _, b in finite]).statistic
    assert correlation(X, Y, kind) == pytest.approx(expected, abs=1e-12)
    assert bootstrap(X, Y, kind, resamples=50).value == pytest.approx(expected, abs=1e-12)
    assert math.isnan(correlation([1.0, 2.0], [2.0, 1.0], kind))  # two models: always +-1, not reported
    assert math.isnan(correlation([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], kind))  # no spread


@pytest.mark.parametrize("kind", KINDS)
def test_bootstrap_is_the_percentile_interval_of_scipy_on_the_draws(kind):
    x = np.array([a for a in X if math.isfinite(a)])
    y = np.array([b for a, b in zip(X, Y) if math.isfinite(a)])
    draws = np.random.default_rng(3).integers(0, len(x), size=(400, len(x)))
    values = [SCIPY[kind](x[d], y[d]).statistic for d in draws
              if len(set(x[d])) > 1 and len(set(y[d])) > 1]
    low, high = np.quantile(values, [0.05, 0.95])
    estimate = bootstrap(X, Y, kind, resamples=400, confidence=0.9, seed=3)
    assert (estimate.low, estimate.high) == pytest.approx((low, high), abs=1e-12)
    assert estimate.degenerate == 400 - len(values)


def correlated(n, rng):
    x = rng.normal(size=n)
    return x, x + rng.normal(size=n)


@pytest.mark.parametrize("kind", KINDS)
def test_interval_contains_the_estimate_narrows_with_more_models_and_is_reproducible(kind):
    rng = np.random.default_rng(0)
    few, many = bootstrap(*correlated(15, rng), kind, 300), bootstrap(*correlated(240, rng), kind, 300)
    for estimate in (few, many):
        assert estimate.low < estimate.value < estimate.high
    assert many.high - many.low < (few.high - few.low) / 2
    x, y = correlated(20, rng)
    assert bootstrap(x, y, kind, 200, seed=7) == bootstrap(x, y, kind, 200, seed=7)
    assert bootstrap(x, y, kind, 200, seed=7).low != bootstrap(x, y, kind, 200, seed=8).low


def test_constant_draws_are_left_out_and_counted():
    # three of four models share the measure's value: a draw of only those (or only the fourth) has none
    x, y = [0.0, 0.0, 0.0, 1.0], [0.5, 0.2, 0.9, 1.0]
    estimate = bootstrap(x, y, "Pearson", resamples=500, seed=1)
    draws = np.random.default_rng(1).integers(0, 4, size=(500, 4))
    assert estimate.degenerate == sum(all(d != 3) or all(d == 3) for d in draws) > 0
    assert math.isfinite(estimate.low) and math.isfinite(estimate.high)


@pytest.mark.parametrize("setting, value", [("resamples", 0), ("resamples", 2.5), ("confidence", 1.0)])
def test_bad_bootstrap_setting_is_one_error(setting, value):
    kwargs = {"resamples": 10, "confidence": 0.95, setting: value}
    with pytest.raises(ConfigurationError, match=setting):
        bootstrap(X, Y, "Pearson", **kwargs)


# Two axes, lr in {0.1, 0.01, 0.001} and wd in {0, 5e-4, 1e-3} (not a full grid), one model without a
# measure value (H) and a setting that is the same everywhere (model):
#   model  lr     wd     measure  target
#   A      0.1    0      1        1
#   B      0.01   0      2        3
#   C      0.001  0      3        2
#   D      0.1    5e-4   1        2
#   E      0.01   5e-4   1        3
#   F      0.001  5e-4   4        5
#   G      0.1    1e-3   2        0
#   H      0.01   1e-3   nan      7
# Kendall's tau-b = (concordant - discordant) / sqrt((n0 - ties in measure) (n0 - ties in target)), n0 = pairs.
# Axis lr (groups of equal wd):
#   wd 0    {A, B, C}: AB +, AC +, BC -                           tau = (2 - 1) / 3 = 1/3
#   wd 5e-4 {D, E, F}: DE tied in the measure, DF +, EF +          tau = 2 / sqrt(2 * 3) = 2/sqrt(6)
#   wd 1e-3 {G} (H has no measure value): one model, left out
#   psi_lr = (1/3 + 2/sqrt(6)) / 2
# Axis wd (groups of equal lr):
#   lr 0.1   {A, D, G}: AD tied in the measure, AG -, DG -         tau = -2 / sqrt(2 * 3) = -2/sqrt(6)
#   lr 0.01  {B, E}: the same target (3, 3): no tau, left out
#   lr 0.001 {C, F}: +                                             tau = 1
#   psi_wd = (1 - 2/sqrt(6)) / 2
# Psi = (psi_lr + psi_wd) / 2 = (1/3 + 1) / 4 = 1/3
GRID = {"A": (0.1, 0.0, 1, 1), "B": (0.01, 0.0, 2, 3), "C": (0.001, 0.0, 3, 2), "D": (0.1, 5e-4, 1, 2),
        "E": (0.01, 5e-4, 1, 3), "F": (0.001, 5e-4, 4, 5), "G": (0.1, 1e-3, 2, 0), "H": (0.01, 1e-3, math.nan, 7)}


def grid_models():
    return [MeasuredModel(name, {"flatness/m": x}, {"RLoss gap": y}, {"lr": lr, "wd": wd, "model": "SmallCNN"})
            for name, (lr, wd, x, y) in GRID.items()]


def test_granulated_kendall_against_the_hand_worked_example():
    models = grid_models()
    psi = granulated_kendall([m.measures["flatness/m"] for m in models], [m.targets["RLoss gap"] for m in models],
                             [m.hyperparameters for m in models], ["lr", "wd"])
    assert psi["lr"] == pytest.approx((1 / 3 + 2 / math.sqrt(6)) / 2)
    assert psi["wd"] == pytest.approx((1 - 2 / math.sqrt(6)) / 2)
    assert psi["Psi"] == pytest.approx(1 / 3)
    assert varying_hyperparameters([m.hyperparameters for m in models]) == ["lr", "wd"]
    (only,) = measure_statistics(models, resamples=20)  # the default axes: those that vary
    assert {axis: e.value for axis, e in only.granulated["RLoss gap"].items()} == pytest.approx(psi)
    assert only.models == 7


def test_granulated_intervals_resample_the_groups_of_the_hand_worked_example():
    # Each axis has two groups with a tau (lr: 1/3 and 2/sqrt(6); wd: -2/sqrt(6) and 1). Drawing two groups
    # with replacement, both draws hit the smaller tau with probability 1/4 (> 2.5%), so the 95% interval of
    # psi_i runs from the smaller tau to the larger one. A draw of Psi averages one draw per axis: both axes
    # at their smallest with probability 1/16 (> 2.5%): Psi's interval is (min_lr + min_wd) / 2 to
    # (max_lr + max_wd) / 2.
    models = grid_models()
    (only,) = measure_statistics(models, resamples=4000, seed=1)
    estimates = only.granulated["RLoss gap"]
    r6 = 2 / math.sqrt(6)
    assert (estimates["lr"].low, estimates["lr"].high) == pytest.approx((1 / 3, r6))
    assert (estimates["wd"].low, estimates["wd"].high) == pytest.approx((-r6, 1))
    assert (estimates["Psi"].low, estimates["Psi"].high) == pytest.approx(((1 / 3 - r6) / 2, (r6 + 1) / 2))
    assert estimates["Psi"].value == pytest.approx(1 / 3)
    # an axis with a single group has no interval (nor has Psi): its spread over groups is unknown
    one_group = [MeasuredModel(n, {"m": x}, {"t": y}, {"lr": lr}) for n, lr, x, y in
                 (("a", 0.1, 1, 1), ("b", 0.2, 2, 3), ("c", 0.3, 3, 2))]
    (single,) = measure_statistics(one_group, resamples=100)
    assert single.granulated["t"]["lr"].value == pytest.approx(1 / 3)
    assert math.isnan(single.granulated["t"]["lr"].low) and math.isnan(single.granulated["t"]["Psi"].low)


def test_axes_by_recorded_name_or_its_last_part():
    settings = [{"optimizer.lr": 0.1, "model.lr_warmup": 1, "optimizer.weight_decay": 0.0, "data.train_size": 200}]
    assert resolve_axes(["lr", "optimizer.weight_decay", "train_size"], settings) == \
        ["optimizer.lr", "optimizer.weight_decay", "data.train_size"]
    with pytest.raises(ConfigurationError, match="axes='width'.*optimizer.lr"):
        resolve_axes(["width"], settings)
    with pytest.raises(ConfigurationError, match="axes='width'"):
        granulated_kendall([1, 2], [1, 2], settings * 2, ["width"])
