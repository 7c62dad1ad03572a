"""Checks of the Trainer's settings as the command line gives them, before any class is built or anything
is written: each bad setting ends with one :class:`~lit_robust.errors.ConfigurationError` naming the
setting and what is allowed, where the Trainer would fail later with a traceback (or not at all)."""

import os
from typing import Any, Mapping, Optional

import torch
from pytorch_lightning.accelerators import AcceleratorRegistry
from pytorch_lightning.strategies import StrategyRegistry

from lit_robust.errors import ConfigurationError, check


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(trainer: Mapping[str, Any], name: str, minimum: int, allowed: str) -> None:
    value = trainer.get(name)
    check(value is None or (is_int(value) and value >= minimum) or (minimum <= -1 and value == -1),
          f"trainer.{name}", value, allowed)


def check_batches(trainer: Mapping[str, Any], name: str) -> None:
    value = trainer.get(name)
    whole = isinstance(value, float) and value > 1.0 and value % 1.0 == 0  # as Lightning reads 2.0: 2 batches
    check(value is None or (is_int(value) and value >= 0) or whole
          or (isinstance(value, float) and 0.0 <= value <= 1.0),
          f"trainer.{name}", value, "an integer >= 0 (batches) or a fraction in [0.0, 1.0]")


def accelerator_available(name: str) -> bool:
    """Whether the accelerator ``name`` (``"gpu"`` meaning CUDA or MPS) can run on this machine."""
    if name == "gpu":
        return torch.cuda.is_available() or torch.backends.mps.is_available()
    return AcceleratorRegistry[name]["accelerator"].is_available()


def check_accelerator(value: Any) -> None:
    if not isinstance(value, str) or value == "auto":
        return
    names = sorted(AcceleratorRegistry.available_accelerators()) + ["gpu"]
    check(value in names, "trainer.accelerator", value, "one of auto, " + ", ".join(names))
    available = ["auto"] + [name for name in names if accelerator_available(name)]
    check(accelerator_available(value), "trainer.accelerator", value,
          f"an accelerator this machine has: {', '.join(available)} (no {value} device was found)")


def check_devices(value: Any) -> None:
    allowed = "an integer >= 1, -1 (all), 'auto', or a non-empty list of device indices"
    if isinstance(value, str) and value != "auto":
        stripped = value.strip()
        try:
            value = [int(i) for i in stripped.strip(",").split(",")] if "," in stripped else int(stripped)
        except ValueError:
            raise ConfigurationError(f"trainer.devices={value!r} is not allowed: trainer.devices must be {allowed}.")
    if is_int(value):
        check(value >= 1 or value == -1, "trainer.devices", value, allowed)
    elif isinstance(value, (list, tuple)):
        check(len(value) > 0 and all(is_int(i) and i >= 0 for i in value), "trainer.devices", value, allowed)


def check_strategy(value: Any) -> None:
    if isinstance(value, str) and value != "auto":
        names = StrategyRegistry.available_strategies()
        check(value in names, "trainer.strategy", value,
              "'auto' or one of " + ", ".join(names[:6]) + ", ... (Lightning's StrategyRegistry)")


def writable_directory(path: str) -> Optional[str]:
    """Why ``path`` cannot be (or become) a writable directory, or ``None`` when it can."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "it is a file"
        return None if os.access(path, os.W_OK | os.X_OK) else "it is not writable"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"


def check_directory(setting: str, path: Any) -> None:
    if isinstance(path, (str, os.PathLike)) and "://" not in str(path):
        problem = writable_directory(str(path))
        if problem is not None:
            raise ConfigurationError(f"{setting}={str(path)!r} is not allowed: {problem}; {setting} must be a "
                                     f"directory this run can create or write to.")


def check_loggers(logger: Any) -> None:
    loggers = logger if isinstance(logger, (list, tuple)) else [logger]
    for entry in loggers:
        init_args = entry.get("init_args") if isinstance(entry, Mapping) else None
        if isinstance(init_args, Mapping):
            check_directory("trainer.logger.init_args.save_dir", init_args.get("save_dir"))


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for the first Trainer setting (a mapping as parsed from the command
    line and configs) that is not allowed."""
    check_count(trainer, "max_epochs", -1, "an integer >= 0, or -1 (no limit)")
    check_count(trainer, "min_epochs", 0, "an integer >= 0")
    check_count(trainer, "max_steps", -1, "an integer >= 0, or -1 (no limit)")
    check_count(trainer, "min_steps", 0, "an integer >= 0")
    check_count(trainer, "num_nodes", 1, "an integer >= 1")
    check_count(trainer, "accumulate_grad_batches", 1, "an integer >= 1")
    check_count(trainer, "check_val_every_n_epoch", 1, "an integer >= 1 or null")
    check_count(trainer, "log_every_n_steps", 1, "an integer >= 1")
    check_count(trainer, "num_sanity_val_steps", -1, "an integer >= 0, or -1 (all)")
    check_count(trainer, "reload_dataloaders_every_n_epochs", 0, "an integer >= 0")
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                 "overfit_batches"):
        check_batches(trainer, name)
    interval = trainer.get("val_check_interval")
    check(interval is None or (is_int(interval) and interval >= 1)
          or (isinstance(interval, float) and 0.0 < interval <= 1.0), "trainer.val_check_interval", interval,
          "an integer >= 1 (batches) or a fraction in (0.0, 1.0]")
    clip = trainer.get("gradient_clip_val")
    check(clip is None or (isinstance(clip, (int, float)) and 0 <= clip < float("inf")), "trainer.gradient_clip_val",
          clip, "a number >= 0 or null")
    check(trainer.get("inference_mode") is not True, "trainer.inference_mode", True,
          "false: the attacks of validation and test need input gradients")
    check_accelerator(trainer.get("accelerator"))
    check_devices(trainer.get("devices"))
    check_strategy(trainer.get("strategy"))
    check_directory("trainer.default_root_dir", trainer.get("default_root_dir"))
    check_loggers(trainer.get("logger"))
