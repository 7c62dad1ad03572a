"""What a checkpoint of this library records beyond Lightning's own contents: the states of the random number
generators (so that a resumed run draws the same batches and random starts as an uninterrupted one) and the
module class (so that ``AdversarialModule.load_from_checkpoint`` builds the variant that wrote it), in types that
``torch.load(weights_only=True)`` reads."""

import random
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch


def random_states() -> Dict[str, Any]:
    """The states of torch's (CPU and CUDA), numpy's and Python's random number generators, in types that
    ``torch.load(weights_only=True)`` reads."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Dict[str, Any]) -> None:
    """Set the random number generators to ``states`` from :func:`random_states`."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


def class_path(cls: type) -> str:
    """The import path of a class, ``module.QualifiedName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def checkpoint_class_path(checkpoint: Mapping[str, Any]) -> Optional[str]:
    """The module class a checkpoint names: the ``_class_path`` that LightningCLI saves with the hyper-parameters,
    else the ``module_class`` that :meth:`AdversarialModule.on_save_checkpoint` writes; ``None`` when neither."""
    named = (checkpoint.get("hyper_parameters") or {}).get("_class_path") or checkpoint.get("module_class")
    return named if isinstance(named, str) else None
