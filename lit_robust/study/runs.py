"""A finished run read back from its directory: its final metrics, its per-epoch scalars and its settings.

A run directory is a TensorBoard log directory written by ``train.py`` (or by a study, or by
``lit-robust-measure`` for a measured model): ``metrics.json`` from its test, event files with the per-epoch
scalars and ``config.yaml`` with the settings that produced it.
"""

import glob
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from lit_robust.callbacks.hparams_session import flatten
from lit_robust.errors import ConfigurationError, check, check_readable_file, one_line_error
from lit_robust.metric_names import (
    ROBUST_OVERFITTING_BEST_RLOSS,
    ROBUST_OVERFITTING_FINAL_RLOSS,
    ROBUST_OVERFITTING_RISE_ABSOLUTE,
    TEST_RERR_AA,
    TEST_RERR_PGD,
)

# metrics computed from others: the rise of the held-out RLoss after its minimum, in loss units
DERIVED = {ROBUST_OVERFITTING_RISE_ABSOLUTE: (ROBUST_OVERFITTING_FINAL_RLOSS, ROBUST_OVERFITTING_BEST_RLOSS)}


@dataclass
class RunResults:
    """The results of one finished run: its label, its directory, its final metrics (``metrics.json``) and its
    per-epoch scalars (TensorBoard). A study's run before it has results is a :class:`lit_robust.study.jobs.Run`."""

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
