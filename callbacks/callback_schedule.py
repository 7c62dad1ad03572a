"""Whether a callback's schedule is ever reached in a fit: one :class:`~lit_robust.errors.ConfigurationError`
for a setting under which the callback could never act, while the run would be named after it.

Each lit_robust callback with a schedule has a ``check_schedule(trainer)`` method built on these checks.
``train.py``, whose fit is followed by a test written to ``metrics.json`` as the run's result, refuses such a
setting before the trainer writes anything (:meth:`lit_robust.cli.RobustCLI.before_fit`). Acting later is
legitimate for the first part of a run that is resumed with a larger ``max_epochs`` (``trainer.max_epochs``
counts the whole schedule): ``train.py --test_after_fit false``, and a trainer built by hand, only warn, from
the callback's ``setup`` (:func:`warn_unless_scheduled`).
"""

import math
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from lit_robust.errors import ConfigurationError, check


def epoch_limit(trainer: "pl.Trainer") -> Optional[int]:
    """The number of epochs the fit runs at most (``trainer.max_epochs``), ``None`` when unlimited or under
    ``fast_dev_run`` (a smoke test of the code, whose numbers are no result)."""
    limit = trainer.max_epochs
    if trainer.fast_dev_run:
        return None
    return None if limit is None or limit < 0 else int(limit)


def check_epoch_reached(trainer: "pl.Trainer", setting: str, value: int, epochs: int, callback: str,
                        action: str) -> None:
    """Refuse ``setting=value`` unless the fit's first ``epochs`` epochs (1-based: the callback first acts
    after epoch ``epochs``) fit in ``trainer.max_epochs``.

    Args:
        trainer: the trainer of the fit.
        setting: the callback's setting as the user writes it (e.g. ``swa_start``).
        value: its value.
        epochs: after how many epochs the callback first acts.
        callback: the callback's name, for the message.
        action: what it does there (e.g. ``"collects weights"``).
    """
    limit = epoch_limit(trainer)
    check(limit is None or epochs <= limit, setting, value,
          f"reached within trainer.max_epochs={limit}: {callback} first {action} after epoch {epochs}, so it would "
          f"never act in this run (max_epochs counts the whole schedule, also when resuming)")


def check_validation_runs(trainer: "pl.Trainer", callback: str, action: str) -> int:
    """Refuse a fit without validation for a callback that acts during validation; returns every how many epochs
    validation runs (1 when it runs within epochs, ``val_check_interval``)."""
    batches = trainer.limit_val_batches
    check(batches != 0 or bool(trainer.fast_dev_run), "trainer.limit_val_batches", batches,
          f"above 0: {callback} {action} during validation, which limit_val_batches=0 turns off")
    every = trainer.check_val_every_n_epoch or 1
    check_epoch_reached(trainer, "trainer.check_val_every_n_epoch", every, every, callback, action)
    return every


def first_common_epoch(every_n_epochs: int, every_validation: int) -> int:
    """The first epoch (1-based) where both schedules meet, the least common multiple."""
    return every_n_epochs * every_validation // math.gcd(every_n_epochs, every_validation)


def warn_unless_scheduled(callback: Any, trainer: "pl.Trainer") -> None:
    """Warn (instead of refusing) when ``callback.check_schedule(trainer)`` finds that it never acts in this fit:
    a run resumed later with a larger ``max_epochs`` may still reach it."""
    try:
        callback.check_schedule(trainer)
    except ConfigurationError as error:
        rank_zero_warn(f"{str(error).replace(' is not allowed:', ':', 1)} It acts only if this run is resumed with a "
                       f"larger trainer.max_epochs.")
