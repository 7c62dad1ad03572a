"""The callbacks' states back from ``ddp_spawn``'s processes.

Under ``strategy="ddp_spawn"`` (and other strategies that start their processes with ``multiprocessing``) the
fit runs in spawned processes on copies of the callbacks; Lightning sends back only the weights, the trainer's
state and ``callback_metrics``. The callbacks of the calling process keep the state they had before the fit,
so a later ``trainer.test`` (its processes are spawned from them) knows nothing of the fit: no
``early_stopping/*`` (:class:`~lit_robust.callbacks.RobustEarlyStopping`), no ``robust_overfitting/*``
(:class:`~lit_robust.callbacks.RobustOverfitting`). :func:`keep_callback_states` makes the trainer send every
stateful callback's ``state_dict`` back from process 0 too and load it into the calling process's callbacks;
``train.py`` does so for every run.
"""

import io
from typing import Any, Dict

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from typing_extensions import override

STATES = "callback_states_bytes"


class CallbackStatesLauncher(_MultiProcessingLauncher):
    """Lightning's launcher of spawned processes, which also brings the callbacks' states back from process 0
    (through its documented extension points ``get_extra_results`` and ``update_main_process_results``)."""

    @override
    def get_extra_results(self, trainer: "pl.Trainer") -> Dict[str, Any]:
        extra = super().get_extra_results(trainer)
        states = {callback.state_key: callback.state_dict() for callback in trainer.callbacks}
        buffer = io.BytesIO()
        torch.save({key: state for key, state in states.items() if state}, buffer)  # as bytes, as Lightning does
        extra[STATES] = buffer.getvalue()
        return extra

    @override
    def update_main_process_results(self, trainer: "pl.Trainer", extra: Dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        if STATES not in extra:
            return
        states = torch.load(io.BytesIO(extra[STATES]), weights_only=True)
        for callback in trainer.callbacks:
            if callback.state_key in states:
                callback.load_state_dict(states[callback.state_key])


def keep_callback_states(trainer: "pl.Trainer") -> None:
    """Make ``trainer`` bring its callbacks' states back from spawned processes (nothing changes for strategies
    that do not spawn, e.g. ``ddp`` or a single device)."""
    launcher = getattr(trainer.strategy, "_launcher", None)
    if type(launcher) is _MultiProcessingLauncher:
        trainer.strategy._launcher = CallbackStatesLauncher(trainer.strategy, start_method=launcher._start_method)
