"""A measurement on the weights validation uses, every few epochs during fit and on test."""

from abc import ABC, abstractmethod
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from lit_robust.errors import check

from .callback_schedule import check_epoch_reached, warn_unless_scheduled


class ScheduledMeasurement(Callback, ABC):
    """Runs :meth:`_measure` on the weights validation uses, every few epochs during fit, and on test.

    During fit, after every ``every_n_epochs``-th training epoch, it runs on the last batch of the
    last validation loader, while the validation weights are in place. Measuring there rather than
    in ``on_validation_epoch_end`` sees what validation sees whatever the order of the callbacks:
    Lightning's own weight averaging swaps the current weights back in its
    ``on_validation_epoch_end``, which may run first. In an epoch without validation it runs at the
    end of the training epoch instead; on test at the end of the test epoch.

    Args:
        every_n_epochs: measure after every this many training epochs; 0 only on test.
        on_test: also measure on test.
    """

    def __init__(self, every_n_epochs: int, on_test: bool) -> None:
        check(isinstance(every_n_epochs, int) and every_n_epochs >= 0, "every_n_epochs", every_n_epochs,
              "an integer >= 0 (0: only on test)")
        check(every_n_epochs > 0 or on_test, "every_n_epochs", every_n_epochs,
              "an integer >= 1 when on_test is false (with both off nothing would ever be measured)")
        self.every_n_epochs = every_n_epochs
        self.on_test = on_test
        self._measured_epoch = -1

    def check_schedule(self, trainer: "pl.Trainer") -> None:
        """Refuse an ``every_n_epochs`` above the trainer's ``max_epochs``: the measurement during fit would never
        run (see :mod:`lit_robust.callbacks.callback_schedule`)."""
        if self.every_n_epochs > 0:
            check_epoch_reached(trainer, "every_n_epochs", self.every_n_epochs, self.every_n_epochs,
                                type(self).__name__, "measures")

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit":
            warn_unless_scheduled(self, trainer)

    @abstractmethod
    def _measure(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Measure ``pl_module`` now; ``stage`` is ``"fit"`` or ``"test"``."""

    def _due(self, trainer: "pl.Trainer") -> bool:
        return (self.every_n_epochs > 0 and not trainer.sanity_checking and trainer.state.fn == "fit"
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0
                and self._measured_epoch != trainer.current_epoch)

    def _run(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._measured_epoch = trainer.current_epoch
        self._measure(trainer, pl_module, stage)

    @override
    def on_validation_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        batches = trainer.num_val_batches
        last = dataloader_idx == len(batches) - 1 and batch_idx == batches[dataloader_idx] - 1
        if last and self._due(trainer):
            self._run(trainer, pl_module, "fit")

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._due(trainer):
            self._run(trainer, pl_module, "fit")

    @override
    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.on_test:
            self._run(trainer, pl_module, "test")
