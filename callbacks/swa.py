"""Stochastic weight averaging (Izmailov et al. 2018) against robust overfitting (Chen et al. ICLR 2021)."""

from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from typing_extensions import override

from lit_robust.data.batches import DEFAULT_BATCH_KEYS, inputs_and_targets
from lit_robust.errors import check

from .callback_schedule import check_epoch_reached, warn_unless_scheduled
from .weight_averaging import AveragedWeightsInValidation


class EqualAverage:
    """The running equal average of SWA, ``w_swa <- (n * w_swa + w) / (n + 1)`` after ``n`` collected
    weights, as an ``AveragedModel`` ``multi_avg_fn``.

    A class so that it pickles (``ddp_spawn``). Integer tensors (batch normalisation's
    ``num_batches_tracked``) take the current value.
    """

    @torch.no_grad()
    def __call__(self, averaged: List[Tensor], current: List[Tensor], num_averaged: Tensor) -> None:
        """Update ``averaged`` in place; ``num_averaged`` is ``n``, the number of weights averaged so far."""
        weight = 1.0 / (float(num_averaged) + 1.0)
        for average, value in zip(averaged, current):
            if average.is_floating_point():
                average.lerp_(value, weight)
            else:
                average.copy_(value)


class StochasticWeightAveraging(AveragedWeightsInValidation):
    """SWA (Izmailov et al. 2018, with cycle length c): the equal average of the weights collected
    at the end of every ``cycle_epochs``-th epoch from epoch ``swa_start`` on,
    ``w_swa <- (n_models * w_swa + w) / (n_models + 1)``, followed by one pass over the training data
    to recompute batch normalisation's statistics for ``w_swa``
    (``torch.optim.swa_utils.update_bn``). Chen et al. (ICLR 2021, "Robust overfitting may be
    mitigated by properly learned smoothening") use it inside PGD-AT to smooth the weights.

    Defaults of the official code of Chen et al. (VITA-Group/Alleviate-Robust-Overfitting):
    collection starts at epoch 55 (0-based; shortly after the first learning-rate decay of its
    200-epoch schedule with decays at 50 and 150), every epoch, only the parameters are averaged,
    and batch normalisation's statistics are recomputed on the (augmented) training data after every
    collection, so that validation and early stopping measure the averaged network. The learning
    rate keeps the module's schedule, as in that code; Izmailov et al.'s constant or cyclic SWA
    learning rate is the module's ``lr_scheduler`` (e.g. ``ConstantLR`` or ``CyclicLR``), so that one
    scheduler, saved and resumed by the trainer, sets it.

    Why not Lightning's :class:`~pytorch_lightning.callbacks.StochasticWeightAveraging`: it replaces
    the scheduler by its own ``SWALR`` and puts the averaged weights in the module only when training
    ends, so validation, early stopping and flatness would measure the current weights. This callback
    is built, like :class:`~lit_robust.callbacks.weight_averaging.WeightAveraging`, on
    :class:`~lit_robust.callbacks.weight_averaging.AveragedWeightsInValidation`: once something is collected,
    the averaged weights are in the module for the whole validation run (held-out early stopping and
    flatness see them), they are the checkpoints' ``state_dict`` (the current weights are
    ``current_model_state``, from which a resumed run continues) and they replace the current weights
    when training ends, so test sees them. Before ``swa_start`` everything sees the current weights.

    Cost: nothing per step; per collection, one forward pass over the training data without
    gradients (``update_bn``), about one forward pass in 16 of a PGD-7 epoch.

    The collection happens after the epoch's last optimizer step, before the epoch's validation.
    In DDP every process holds the same weights and averages them identically; the recomputed
    batch-normalisation statistics (each process sees its shard) are averaged across processes.

    ``swa_start`` must be below the trainer's ``max_epochs`` (see :mod:`lit_robust.callbacks.callback_schedule`:
    refused by ``train.py``, warned about at setup otherwise), and SWA runs without
    :class:`~lit_robust.callbacks.weight_averaging.WeightAveraging` (see
    :class:`~lit_robust.callbacks.weight_averaging.AveragedWeightsInValidation`).

    Args:
        swa_start: first epoch (0-based) whose final weights are collected (55 in the official code).
        cycle_epochs: collect every this many epochs (c of Izmailov et al.; 1 in the official code).
        update_bn: recompute batch normalisation's statistics of the averaged weights on the
            training data after every collection (official code). ``False``: average the buffers
            equally with the parameters instead, and make no extra pass.
        device: keep the average on this device (e.g. ``"cpu"``); default the module's device.
    """

    def __init__(self, swa_start: int = 55, cycle_epochs: int = 1, update_bn: bool = True,
                 device: Optional[str] = None) -> None:
        check(isinstance(swa_start, int) and swa_start >= 0, "swa_start", swa_start, "an integer >= 0 (an epoch)")
        check(isinstance(cycle_epochs, int) and cycle_epochs >= 1, "cycle_epochs", cycle_epochs, "an integer >= 1")
        super().__init__(device=device, use_buffers=not update_bn, multi_avg_fn=EqualAverage())
        self.swa_start = swa_start
        self.cycle_epochs = cycle_epochs
        self.update_bn = update_bn

    def check_schedule(self, trainer: "pl.Trainer") -> None:
        """Refuse a ``swa_start`` at or after the last epoch: nothing would be collected, and the run would test
        the plain weights under SWA's name (see :mod:`lit_robust.callbacks.callback_schedule`)."""
        check_epoch_reached(trainer, "swa_start", self.swa_start, self.swa_start + 1, "StochasticWeightAveraging",
                            "collects weights")

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            warn_unless_scheduled(self, trainer)

    @property
    def num_averaged(self) -> int:
        """How many weights the average holds."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    @override
    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        """Collect at the end of epochs ``swa_start``, ``swa_start + cycle_epochs``, ..."""
        return (epoch_idx is not None and epoch_idx >= self.swa_start
                and (epoch_idx - self.swa_start) % self.cycle_epochs == 0)

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Collect after the epoch's last batch, so that the epoch's validation sees the new average."""
        epoch = trainer.current_epoch
        if (batch_idx + 1 != trainer.num_training_batches or epoch <= self._latest_update_epoch
                or not self.should_update(epoch_idx=epoch)):
            return
        assert self._average_model is not None
        self._average_model.update_parameters(pl_module)
        self._latest_update_epoch = epoch
        if self.update_bn:
            self.recompute_batch_norm(trainer, self._average_model.module)

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Nothing: the collection happened after the epoch's last batch."""

    @staticmethod
    def recompute_batch_norm(trainer: "pl.Trainer", module: nn.Module) -> None:
        """Batch normalisation's running statistics of ``module`` as the average over one pass through
        this process's training data (``update_bn``), then averaged across processes."""
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        device = next(module.parameters()).device
        keys = getattr(module, "batch_keys", DEFAULT_BATCH_KEYS)
        inputs = (inputs_and_targets(batch, keys)[0] for batch in trainer.train_dataloader)  # the batch contract
        with torch.no_grad():
            update_bn(inputs, module, device=device)
        for norm in norms:
            for name in ("running_mean", "running_var"):
                buffer = getattr(norm, name)
                buffer.copy_(trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))

    @override
    def on_validation_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Swap the averaged weights in once something is collected."""
        if self.num_averaged > 0:
            super().on_validation_epoch_start(trainer, pl_module)

    @override
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Put the averaged weights in the module for test, once something is collected."""
        if self.num_averaged > 0:
            super().on_train_end(trainer, pl_module)

    @override
    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: Dict[str, Any]) -> None:
        """Averaged weights in ``state_dict`` once something is collected, the current ones before."""
        if self._average_model is not None and self.num_averaged == 0:
            checkpoint["current_model_state"] = checkpoint["state_dict"]
            checkpoint["averaging_state"] = {name: value for name, value in self._average_model.state_dict().items()
                                             if not name.startswith("module.")}
            return
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    @override
    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "latest_update_epoch": self._latest_update_epoch}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._latest_update_epoch = state_dict["latest_update_epoch"]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(swa_start=self.swa_start, cycle_epochs=self.cycle_epochs,
                                        update_bn=self.update_bn)
