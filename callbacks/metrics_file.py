"""MetricsFile: the test metrics of a run in ``metrics.json``, next to its logs."""

import json
import os
from typing import Any, Dict

import pytorch_lightning as pl
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from lit_robust.metric_names import EARLY_STOPPING, FLATNESS, ROBUST_OVERFITTING, TEST

PREFIXES = (TEST, FLATNESS, EARLY_STOPPING, ROBUST_OVERFITTING)


class MetricsFile(Callback):
    """At the end of every test, add the metrics logged under ``test/``, ``flatness/``, ``early_stopping/`` and
    ``robust_overfitting/`` (the module's test protocol and the callbacks' results), with the epoch, the global
    step and the tested checkpoint, to ``metrics.json`` in the run's log directory (the trainer's ``log_dir``,
    else its ``default_root_dir``). An earlier test's entries stay unless this one logs them again.

    ``train.py`` adds it to every run; a trainer built by hand writes the file only when given this callback.
    """

    @override
    def on_test_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # trainer.log_dir is a collective call: every rank asks, rank zero writes
        self.write(trainer, pl_module, trainer.log_dir or trainer.default_root_dir)

    @rank_zero_only
    def write(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", directory: str) -> None:
        """Add this test's metrics to ``metrics.json`` in ``directory``."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "metrics.json")
        metrics: Dict[str, Any] = {}
        if os.path.exists(path):
            with open(path) as f:
                metrics = json.load(f)
        for name, value in trainer.callback_metrics.items():
            if name.startswith(PREFIXES):
                metrics[name] = float(value)
        metrics["epoch"] = pl_module.current_epoch
        metrics["global_step"] = pl_module.global_step
        metrics["ckpt_path"] = trainer.ckpt_path
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
        rank_zero_info(f"Test metrics written to {path}")
