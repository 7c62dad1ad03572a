"""Weight averaging: an exponential moving average of the weights, updated every iteration.

Stutz et al. 2021, supplement Eq. 8 and Sec. G.
"""

from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import StochasticWeightAveraging as LightningStochasticWeightAveraging
from pytorch_lightning.callbacks import WeightAveraging as LightningWeightAveraging
from torch import Tensor
from typing_extensions import override

from lit_robust.errors import check


class ExponentialMovingAverage:
    """``w_bar <- tau * w_bar + (1 - tau) * w`` as an ``AveragedModel`` ``multi_avg_fn``.

    Stutz et al. 2021, supplement Eq. 8.

    A class rather than a closure (``torch.optim.swa_utils.get_ema_avg_fn``) so that it pickles,
    which ``ddp_spawn`` needs. Integer tensors (batch normalisation's ``num_batches_tracked``) take
    the current value: a moving average of a counter means nothing.

    Args:
        decay: tau of Eq. 8, in (0, 1).
    """

    def __init__(self, decay: float) -> None:
        check(0.0 < decay < 1.0, "decay", decay,
              "a number in (0, 1), e.g. 0.98, 0.985, 0.99 or 0.9975 (Stutz et al. 2021)")
        self.decay = decay

    @torch.no_grad()
    def __call__(self, averaged: List[Tensor], current: List[Tensor], num_averaged: Tensor) -> None:
        """Update ``averaged`` in place with supplement Eq. 8 of Stutz et al. 2021 (``num_averaged`` is unused)."""
        for average, value in zip(averaged, current):
            if average.is_floating_point():
                average.lerp_(value, 1.0 - self.decay)
            else:
                average.copy_(value)


class AveragedWeightsInValidation(LightningWeightAveraging):
    """Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging` with the averaged weights in the
    module for the whole validation run, up to ``on_validation_end``, so that every callback measuring
    during validation (held-out early stopping, flatness) sees the averaged weights whatever its place
    in the callback list; checkpoints written in between still hold the averaged weights in
    ``state_dict``. Subclasses choose the average (EMA, SWA) and when it is updated.

    Only one callback that swaps averaged weights in (this one, another of its kind, or one of Lightning's
    weight-averaging callbacks) may run in a fit: with two, which weights validation, test and the checkpoints
    hold would depend on the order of their hooks, so :meth:`check_callbacks` refuses the combination.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swapped = False

    def check_callbacks(self, trainer: "pl.Trainer") -> None:
        """Raise :class:`~lit_robust.errors.ConfigurationError` when another weight-averaging callback runs in
        ``trainer`` (run in :meth:`setup`, and by ``train.py`` before anything is written)."""
        averaging = (LightningWeightAveraging, LightningStochasticWeightAveraging)
        others = [type(c).__name__ for c in trainer.callbacks if c is not self and isinstance(c, averaging)]
        check(not others, "trainer.callbacks", [type(self).__name__] + others,
              "at most one weight-averaging callback (WeightAveraging, StochasticWeightAveraging or Lightning's): "
              "each swaps its averaged weights in for validation, test and checkpoints, so with two the weights "
              "measured would be undefined")

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit":
            self.check_callbacks(trainer)
        super().setup(trainer, pl_module, stage)

    @override
    def on_validation_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Swap the averaged weights into the module for validation."""
        if self._average_model is not None and not self._swapped:
            self._swap_models(pl_module)
            self._swapped = True

    @override
    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Keep the averaged weights in place until :meth:`on_validation_end` (see the class docstring)."""

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Swap the current weights back for training."""
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    @override
    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: Dict[str, Any]) -> None:
        """Put the averaged weights in ``state_dict`` and the current ones in ``current_model_state``."""
        if not self._swapped:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            return
        # during validation the module holds the averaged weights and the averaged model the current ones;
        # copies, because the swap in on_validation_end overwrites both in place
        assert self._average_model is not None
        state = self._average_model.state_dict()
        checkpoint["state_dict"] = {name: value.clone() for name, value in checkpoint["state_dict"].items()}
        checkpoint["current_model_state"] = {name[7:]: value.clone() for name, value in state.items()
                                             if name.startswith("module.")}
        checkpoint["averaging_state"] = {name: value for name, value in state.items()
                                         if not name.startswith("module.")}


class WeightAveraging(AveragedWeightsInValidation):
    """A running exponential average of the weights (Stutz et al. 2021, supplement Eq. 8, after Gowal et al. 2020).

    ``w_bar(t) = tau * w_bar(t - 1) + (1 - tau) * w(t)`` after every optimizer step ``t``, with tau =
    ``decay`` (the paper uses 0.98, 0.985, 0.99 and 0.9975). Built on Lightning's
    :class:`~pytorch_lightning.callbacks.WeightAveraging`, which keeps the average in an
    ``AveragedModel``, swaps it into the module for validation, copies it into the module when
    training ends (so test sees it) and saves it as the checkpoint's ``state_dict`` (the current
    weights go to ``current_model_state``, from which a resumed run continues).

    Unlike Lightning's callback, the averaged weights stay in the module for the whole validation
    run (see :class:`AveragedWeightsInValidation`).

    The average starts from the weights after the first iteration (``AveragedModel`` copies them);
    the paper does not say where it starts, and the difference decays as tau^t.

    Args:
        decay: tau of Eq. 8, in (0, 1).
        average_buffers: also average the buffers (batch normalisation's running mean and variance)
            with Eq. 8. When ``False`` the averaged weights are used with the current model's
            batch-normalisation statistics, copied at every update. The paper averages "the
            model's weights" and does not say; the default ``True`` averages everything, as
            Lightning does.
        device: keep the average on this device (e.g. ``"cpu"`` to save accelerator memory);
            default the module's device.
    """

    def __init__(self, decay: float = 0.99, average_buffers: bool = True, device: Optional[str] = None) -> None:
        super().__init__(device=device, use_buffers=average_buffers, multi_avg_fn=ExponentialMovingAverage(decay))
        self.decay = decay
        self.average_buffers = average_buffers

    @property
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay, average_buffers=self.average_buffers)
