"""Robust overfitting in numbers: the held-out robust loss's minimum, its rise, the training robust loss, and
flatness over the epochs."""

import math
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from typing_extensions import override

from lit_robust.errors import check
from lit_robust.metric_names import (
    FLATNESS_AVG_RLOSS,
    ROBUST_OVERFITTING,
    ROBUST_OVERFITTING_RLOSS,
    TRAIN_RLOSS,
    VAL_RLOSS,
)

from .callback_schedule import check_validation_runs, warn_unless_scheduled

SUMMARY = ("best_epoch", "best_rloss", "final_rloss", "rise", "train_rloss")
FLATNESS_SUMMARY = ("best_flatness", "final_flatness")


class RobustOverfitting(Callback):
    """Record the held-out and training robust loss per epoch and tell whether training overfit robustly.

    Robust overfitting (Rice et al. 2020; Stutz et al. 2021, Sec. 1; supplement Fig. 1): after the first
    learning-rate drop the robust loss (RLoss, cross-entropy on PGD examples) on held-out examples
    reaches its minimum and then rises while the training RLoss keeps falling. This callback records
    ``val/rloss`` (the module's validation on the held-out split) after every validation, the
    training RLoss (``train/rloss``, the epoch mean on the training adversarial examples) and the
    learning rate of every epoch, and the flatness metric ``flatness`` (by default the average-case
    flatness in RLoss of :class:`~lit_robust.callbacks.FlatnessMonitor`, Stutz et al. 2021, Sec. 4.1)
    in the epochs it is measured: the paper's point is that flatness worsens as robust overfitting
    sets in (Stutz et al. 2021, Fig. 5). At the end of fit it logs a summary: the epoch and value of
    the held-out minimum, the final held-out RLoss, the rise ``final / minimum - 1``, the final
    training RLoss and, where measured, flatness at the held-out minimum (the last measurement at or
    before its epoch) and at the end.

    With a TensorBoard logger it writes, at the start of fit, a Custom Scalars layout (held-out and
    training RLoss on one chart, flatness on another, the learning rate), and draws both RLoss
    curves with the learning-rate drops marked, beside flatness over the epochs, as the image
    ``robust_overfitting/rloss``: every ``plot_every_n_epochs`` epochs, so that a running or crashed
    run has it, and at the end of fit.

    On test the numbers are logged as ``robust_overfitting/best_epoch``, ``robust_overfitting/best_rloss``,
    ``robust_overfitting/final_rloss``, ``robust_overfitting/rise`` (a fraction: 0.3 is +30%),
    ``robust_overfitting/train_rloss`` and, with flatness, ``robust_overfitting/best_flatness`` and
    ``robust_overfitting/final_flatness``, so that they reach ``metrics.json`` and TensorBoard's HPARAMS
    tab (:meth:`test_metrics`).

    A LightningModule of one's own logs ``val/rloss`` in validation and ``train/rloss`` as an epoch mean in
    training (``self.log("train/rloss", ..., on_epoch=True)``), as every ``AdversarialModule`` does; when
    either is missing once a training epoch and a validation have run, the callback warns once naming it.

    Under ``ddp_spawn`` the fit runs on copies of the callbacks in spawned processes; this state comes back to
    the calling process only with :func:`lit_robust.cli.spawn_results.keep_callback_states` (``train.py`` calls it),
    without which a later ``trainer.test`` would log none of it.

    Args:
        threshold: the rise (a fraction of the minimum) above which the summary calls the run
            robustly overfit.
        flatness: the logged metric drawn and summarised as flatness; ``None`` for none.
        plot_every_n_epochs: redraw the chart after every this many epochs; 0 only at the end of fit.
    """

    def __init__(self, *, threshold: float = 0.1, flatness: Optional[str] = FLATNESS_AVG_RLOSS,
                 plot_every_n_epochs: int = 10) -> None:
        check(threshold >= 0, "threshold", threshold, "a fraction >= 0 (0.1: the final held-out RLoss 10% above "
                                                      "its minimum)")
        check(isinstance(plot_every_n_epochs, int) and plot_every_n_epochs >= 0, "plot_every_n_epochs",
              plot_every_n_epochs, "an integer >= 0 (0: only at the end of fit)")
        check(flatness is None or (isinstance(flatness, str) and flatness != ""), "flatness", flatness,
              "the name of a logged metric (e.g. flatness/avg_rloss) or None")
        self.threshold = threshold
        self.flatness_metric = flatness
        self.plot_every_n_epochs = plot_every_n_epochs
        self.val_rloss: Dict[int, float] = {}
        self.train_rloss: Dict[int, float] = {}
        self.lr: Dict[int, float] = {}
        self.flatness: Dict[int, float] = {}
        self._pending_train_epoch: Optional[int] = None
        self._validated = False
        self._checked_metrics = False
        self._flatness_before: Optional[float] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(threshold=self.threshold)

    def check_schedule(self, trainer: "pl.Trainer") -> None:
        """Refuse a fit without validation, where nothing would be recorded (see
        :mod:`lit_robust.callbacks.callback_schedule`)."""
        check_validation_runs(trainer, "RobustOverfitting", "records the held-out robust loss")

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit":
            warn_unless_scheduled(self, trainer)

    def _record_train_rloss(self, trainer: "pl.Trainer") -> None:
        # the epoch mean of train/rloss reaches callback_metrics after on_train_epoch_end: read it one hook later
        value = trainer.callback_metrics.get(TRAIN_RLOSS)
        if self._pending_train_epoch is not None and value is not None:
            self.train_rloss[self._pending_train_epoch] = float(value)
        if self._pending_train_epoch is not None and self._validated:
            self._check_metrics(trainer)
        self._pending_train_epoch = None

    def _check_metrics(self, trainer: "pl.Trainer") -> None:
        """Warn once when the module logs no ``val/rloss`` or no ``train/rloss`` (after a training epoch and a
        validation, when both would be there)."""
        if self._checked_metrics:
            return
        self._checked_metrics = True
        missing = [name for name in (VAL_RLOSS, TRAIN_RLOSS) if name not in trainer.callback_metrics]
        if missing:
            rank_zero_warn(
                f"RobustOverfitting: the module logs no {' and no '.join(missing)}, so robust overfitting cannot be "
                f"measured ({'no held-out curve and no summary' if VAL_RLOSS in missing else 'no training curve'}"
                f"). Log val/rloss (the robust loss on the held-out split) in validation_step and train/rloss (the "
                f"robust loss on the training adversarial examples, on_epoch=True) in training_step, as "
                f"lit_robust's AdversarialModule does.")

    @override
    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._record_train_rloss(trainer)
        if trainer.optimizers:
            self.lr[trainer.current_epoch] = float(trainer.optimizers[0].param_groups[0]["lr"])

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._pending_train_epoch = trainer.current_epoch

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._write_layout(trainer)

    def _flatness_now(self, trainer: "pl.Trainer") -> Optional[float]:
        value = trainer.callback_metrics.get(self.flatness_metric) if self.flatness_metric else None
        return None if value is None else float(value)

    @override
    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # callback_metrics keeps a metric's last value: flatness measured in this validation is a value it did not
        # hold before
        self._flatness_before = self._flatness_now(trainer)

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._validated = True
        if VAL_RLOSS not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        self.val_rloss[epoch] = float(trainer.callback_metrics[VAL_RLOSS])
        flatness = self._flatness_now(trainer)
        if flatness is not None and flatness != self._flatness_before:
            self.flatness[epoch] = flatness
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs  # on_fit_end draws that one
        if self.plot_every_n_epochs and (epoch + 1) % self.plot_every_n_epochs == 0 and not last:
            self._plot(trainer, self.lr_drops())

    @override
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._record_train_rloss(trainer)

    def summary(self) -> Dict[str, float]:
        """``best_epoch``, ``best_rloss``, ``final_rloss``, ``rise`` (final / best - 1) and ``train_rloss``
        (of the last epoch; NaN when not recorded); with flatness recorded also ``best_flatness`` (the last
        measurement at or before the held-out minimum's epoch, else the first) and ``final_flatness`` (the
        last); empty before the first validation."""
        if not self.val_rloss:
            return {}
        best_epoch = min(self.val_rloss, key=lambda epoch: (self.val_rloss[epoch], epoch))
        best, final = self.val_rloss[best_epoch], self.val_rloss[max(self.val_rloss)]
        train = self.train_rloss[max(self.train_rloss)] if self.train_rloss else math.nan
        numbers = {"best_epoch": float(best_epoch), "best_rloss": best, "final_rloss": final,
                   "rise": final / best - 1.0 if best > 0 else 0.0, "train_rloss": train}
        if self.flatness:
            before = [epoch for epoch in self.flatness if epoch <= best_epoch]
            numbers["best_flatness"] = self.flatness[max(before) if before else min(self.flatness)]
            numbers["final_flatness"] = self.flatness[max(self.flatness)]
        return numbers

    def test_metrics(self, pl_module: "pl.LightningModule") -> List[str]:
        """The names this callback logs on test (the HParams session's metrics)."""
        names = SUMMARY + (FLATNESS_SUMMARY if self.flatness_metric else ())
        return [f"{ROBUST_OVERFITTING}{name}" for name in names]

    def lr_drops(self) -> List[int]:
        """Epochs whose learning rate is lower than the previous epoch's."""
        epochs = sorted(self.lr)
        return [e for p, e in zip(epochs, epochs[1:]) if self.lr[e] < self.lr[p]]

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        numbers = self.summary()
        if not numbers:
            return
        drops = self.lr_drops()
        rose = numbers["rise"] > self.threshold
        fits = numbers["train_rloss"] < numbers["best_rloss"]
        if rose and fits:
            meaning = ("Training kept fitting its adversarial examples while the robust loss on unseen examples got "
                       "worse: robust overfitting; early stopping at the minimum keeps the better model.")
        elif rose:
            meaning = ("The held-out robust loss rose, but the training robust loss is no lower than the held-out "
                       "minimum: the run is unstable or too short to call it robust overfitting.")
        else:
            meaning = (f"The held-out robust loss did not rise by more than {self.threshold:.0%} of its minimum: no "
                       f"robust overfitting in this run.")
        flatness = ""
        if "best_flatness" in numbers:
            flatness = (f" Flatness ({self.flatness_metric}): {numbers['best_flatness']:.4f} at the held-out minimum, "
                        f"{numbers['final_flatness']:.4f} at the end.")
        rank_zero_info(
            f"Robust overfitting: held-out RLoss minimum {numbers['best_rloss']:.4f} at epoch "
            f"{int(numbers['best_epoch'])} (learning-rate drops at epochs "
            f"{', '.join(map(str, drops)) if drops else 'none'}); final held-out RLoss "
            f"{numbers['final_rloss']:.4f} ({numbers['rise']:+.1%}); final training RLoss "
            f"{numbers['train_rloss']:.4f}.{flatness} {meaning}")
        self._plot(trainer, drops)

    def layout(self) -> Dict[str, Dict[str, list]]:
        """The Custom Scalars layout: categories of charts, each chart a list of tag patterns (regular expressions)."""
        charts = {f"RLoss: held-out ({VAL_RLOSS}) and training ({TRAIN_RLOSS})": [
            "Multiline", [f"^{VAL_RLOSS}$", f"^{TRAIN_RLOSS}$"]]}
        if self.flatness_metric:
            charts[f"flatness ({self.flatness_metric})"] = ["Multiline", [f"^{self.flatness_metric}$"]]
        charts["learning rate"] = ["Multiline", ["^lr-"]]
        return {"robust overfitting": charts}

    @rank_zero_only
    def _write_layout(self, trainer: "pl.Trainer") -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(self.layout())
                logger.experiment.flush()

    @rank_zero_only
    def _plot(self, trainer: "pl.Trainer", drops: List[int]) -> None:
        """A chart of held-out and training RLoss with the learning-rate drops, beside flatness, for TensorBoard."""
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not loggers or not self.val_rloss:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        numbers = self.summary()
        panels = 2 if self.flatness else 1
        figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
        rloss, flatness = axes[0][0], axes[0][-1]
        epochs = sorted(self.val_rloss)
        rloss.plot(epochs, [self.val_rloss[e] for e in epochs], label="held-out RLoss")
        if self.train_rloss:
            rloss.plot(sorted(self.train_rloss), [self.train_rloss[e] for e in sorted(self.train_rloss)],
                       label="training RLoss")
        rloss.plot([numbers["best_epoch"]], [numbers["best_rloss"]], "o", color="black", label="held-out minimum")
        rloss.set_ylabel("robust loss (PGD)")
        rloss.set_title(f"held-out RLoss {numbers['rise']:+.0%} from its minimum")
        if self.flatness:
            measured = sorted(self.flatness)
            flatness.plot(measured, [self.flatness[e] for e in measured], color="tab:green", label="flatness")
            flatness.axvline(numbers["best_epoch"], color="black", linestyle=":", label="held-out minimum")
            flatness.set_ylabel(self.flatness_metric)
            flatness.set_title(f"flatness {numbers['best_flatness']:.3f} at the minimum, "
                               f"{numbers['final_flatness']:.3f} at the end")
        for panel in axes[0]:
            for i, epoch in enumerate(drops):
                panel.axvline(epoch, color="grey", linestyle="--", label="learning-rate drop" if i == 0 else None)
            panel.set_xlabel("epoch")
            panel.legend()
        figure.tight_layout()
        for logger in loggers:
            logger.experiment.add_figure(ROBUST_OVERFITTING_RLOSS, figure, global_step=trainer.global_step,
                                         close=False)
            logger.experiment.flush()
        plt.close(figure)

    @override
    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        numbers = self.summary()
        if numbers:
            pl_module.log_dict({f"{ROBUST_OVERFITTING}{name}": value for name, value in numbers.items()},
                               sync_dist=False)

    @override
    def state_dict(self) -> Dict[str, Any]:
        return {"val_rloss": dict(self.val_rloss), "train_rloss": dict(self.train_rloss), "lr": dict(self.lr),
                "flatness": dict(self.flatness)}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.val_rloss = {int(k): float(v) for k, v in state_dict["val_rloss"].items()}
        self.train_rloss = {int(k): float(v) for k, v in state_dict["train_rloss"].items()}
        self.lr = {int(k): float(v) for k, v in state_dict["lr"].items()}
        self.flatness = {int(k): float(v) for k, v in state_dict.get("flatness", {}).items()}
