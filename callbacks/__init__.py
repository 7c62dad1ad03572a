"""Reusable Lightning callbacks for adversarial training: one callback per file."""

from .flatness_monitor import FlatnessMonitor, FlatnessSettings
from .hparams_session import HParamsSession
from .landscape_monitor import LandscapeMonitor
from .metrics_file import MetricsFile
from .robust_early_stopping import RobustEarlyStopping
from .robust_overfitting import RobustOverfitting
from .swa import StochasticWeightAveraging
from .weight_averaging import ExponentialMovingAverage, WeightAveraging
from .weight_clipping import WeightClipping

__all__ = ["ExponentialMovingAverage", "FlatnessMonitor", "FlatnessSettings", "HParamsSession", "LandscapeMonitor",
           "MetricsFile", "RobustEarlyStopping", "RobustOverfitting", "StochasticWeightAveraging", "WeightAveraging",
           "WeightClipping"]
