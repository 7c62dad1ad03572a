"""Reusable Lightning callbacks for adversarial training: one callback per file."""

from callbacks.flatness_monitor import FlatnessMonitor, FlatnessSettings
from callbacks.landscape_monitor import LandscapeMonitor
from callbacks.metrics_file import MetricsFile
from callbacks.robust_early_stopping import RobustEarlyStopping
from callbacks.robust_overfitting import RobustOverfitting
from callbacks.swa import StochasticWeightAveraging
from callbacks.weight_averaging import ExponentialMovingAverage, WeightAveraging
from callbacks.weight_clipping import WeightClipping

__all__ = ["ExponentialMovingAverage", "FlatnessMonitor", "FlatnessSettings", "LandscapeMonitor", "MetricsFile",
           "RobustEarlyStopping", "RobustOverfitting", "StochasticWeightAveraging", "WeightAveraging", "WeightClipping"]
