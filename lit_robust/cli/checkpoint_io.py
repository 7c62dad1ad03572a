"""Checkpoints written atomically: to a temporary file in the same directory, then renamed, so that a full
disk or a crash while writing never leaves a truncated checkpoint under the real name (nor overwrites the
previous one)."""

import os
from typing import Any, Dict, Optional

from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; nothing was left under its name."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` that writes ``path`` as ``path.tmp`` and renames it (``os.replace``, atomic on
    POSIX and Windows); on failure the temporary file is removed and :class:`CheckpointWriteError` names the
    checkpoint and the cause. Pass it as ``Trainer(plugins=[AtomicCheckpointIO()])``; train.py does."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: _PATH,
                        storage_options: Optional[Any] = None) -> None:
        path = os.fspath(path)
        temporary = f"{path}.tmp"
        try:
            super().save_checkpoint(checkpoint, temporary, storage_options)
            os.replace(temporary, path)
        except OSError as error:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise CheckpointWriteError(f"the checkpoint {path} could not be written ({error}); nothing partial was "
                                       f"left, earlier checkpoints are kept.") from error
