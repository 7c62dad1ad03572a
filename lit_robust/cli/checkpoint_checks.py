"""The checks of a ``--ckpt_path`` before anything runs: the file is a Lightning checkpoint, of this module
class and network (resuming), with the tensors of the model configured here."""

import os
import pickle
import zipfile
from typing import Any, Dict, Optional, Tuple

import torch
from jsonargparse import Namespace
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lit_robust.errors import ConfigurationError, check

SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")


def read_checkpoint(ckpt_path: Optional[str], weights_only: Optional[bool] = None) -> Optional[Dict[str, Any]]:
    """The checkpoint ``ckpt_path``, read on the CPU.

    ``None`` when there is no path or Lightning resolves it (``"last"``, ``"best"``, ..., remote paths);
    :class:`ConfigurationError` when the file is missing, unreadable or not a Lightning checkpoint.
    """
    if (ckpt_path is None or ckpt_path in SPECIAL_CHECKPOINTS or ckpt_path.startswith("registry:")
            or "://" in ckpt_path):
        return None
    check(os.path.isfile(ckpt_path), "ckpt_path", ckpt_path, "an existing checkpoint file")
    check(zipfile.is_zipfile(ckpt_path), "ckpt_path", ckpt_path, "a checkpoint file written by torch.save")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only is not False)
    except pickle.UnpicklingError:
        raise ConfigurationError(
            f"ckpt_path={ckpt_path!r} is not allowed: it holds objects other than tensors and plain data, which "
            f"torch.load(weights_only=True) refuses; pass --weights_only false if you trust the file.") from None
    except Exception as error:  # whatever the reason, the file is not a checkpoint this run can use
        raise ConfigurationError(f"ckpt_path={ckpt_path!r} is not allowed: it cannot be read as a checkpoint "
                                 f"({type(error).__name__}: {error}).") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    check(isinstance(state, dict), "ckpt_path", ckpt_path, "a Lightning checkpoint (a file with a state_dict)")
    return checkpoint


# settings that may change when a run resumes: they do not change what the checkpoint's weights are
NOT_COMPARED = ("_class_path", "_instantiator", "model")


def check_resumable(ckpt_path: str, saved: Dict[str, Any], model_config: Any) -> None:
    """Refuse to resume fitting from a checkpoint of another module class or another network (one message
    naming the difference); warn about the module's settings that differ from the checkpoint's (the
    settings given here are the ones that run)."""
    configured = namespace_to_dict(model_config)
    saved_class = saved.get("_class_path")
    if saved_class is not None and saved_class != configured.get("class_path"):
        raise ConfigurationError(
            f"ckpt_path={ckpt_path!r} is not allowed: it was written by {saved_class}, this run trains "
            f"{configured.get('class_path')}; to resume, the model class must be the checkpoint's.")
    init_args = configured.get("init_args") or {}
    if saved.get("model") is not None and saved["model"] != init_args.get("model"):
        raise ConfigurationError(
            f"ckpt_path={ckpt_path!r} is not allowed: its network {describe(saved['model'])} differs from the "
            f"network configured here, {describe(init_args.get('model'))}; to resume, the network must be the "
            f"checkpoint's.")
    changed = [f"{name}: {saved[name]!r} -> {init_args[name]!r}" for name in sorted(saved)
               if name not in NOT_COMPARED and name in init_args and saved[name] != init_args[name]]
    if changed:
        rank_zero_warn(f"Resuming from {ckpt_path} with settings of the model that differ from the checkpoint's "
                       f"(the ones given here are used): {'; '.join(changed)}.")


def checkpoint_progress(checkpoint: Dict[str, Any]) -> Tuple[int, int, int]:
    """The epochs (Lightning's ``epoch_progress.current.processed``), optimizer steps and training batches
    (``epoch_loop.batch_progress.total.completed``) a checkpoint had done."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = ((loop.get("epoch_progress") or {}).get("current") or {}).get("processed", 0)
    batches = ((loop.get("epoch_loop.batch_progress") or {}).get("total") or {}).get("completed", 0)
    return int(epochs), int(checkpoint.get("global_step", 0)), int(batches)


def namespace_to_dict(value: Any) -> Any:
    """A jsonargparse ``Namespace`` (or a nest of them) as plain dicts."""
    if isinstance(value, Namespace):
        return value.as_dict()
    return value


def describe(network: Any) -> str:
    """A network's configuration on one line."""
    if isinstance(network, dict):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted((network.get("init_args") or {}).items()))
        return f"{network.get('class_path')}({args})"
    return repr(network)


def check_same_tensors(model: nn.Module, ckpt_path: str, shapes: Dict[str, tuple]) -> None:
    """Raise :class:`ConfigurationError` unless the checkpoint's tensors (``shapes``, by name) are those of
    ``model``: a checkpoint of another model fails here, with one message, instead of in the middle of
    the trainer's restore, after the log directory is written."""
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    differences = [f"{name!r} is missing" for name in expected if name not in shapes]
    differences += [f"{name!r} is not in this model" for name in shapes if name not in expected]
    differences += [f"{name!r} has shape {shapes[name]}, this model {shape}"
                    for name, shape in expected.items() if name in shapes and shapes[name] != shape]
    if differences:
        raise ConfigurationError(
            f"ckpt_path={ckpt_path!r} is not allowed: it is a checkpoint of another model ({len(differences)} "
            f"differences, e.g. {differences[0]}); ckpt_path must be a checkpoint of the model configured here.")
