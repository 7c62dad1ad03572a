"""The command line: LightningCLI with the project's defaults, a test after fit and a summary."""

import argparse
import logging
import os
import pickle
import re
import sys
import zipfile
from typing import Dict, Optional

import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError, check
from lit_robust.modules.base import AdversarialModule

TRAINER_DEFAULTS = {
    # attacks in validation and test need gradients
    "inference_mode": False,
    "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
               "init_args": {"save_dir": "logs", "name": "default"}},
}


class RobustCLI(LightningCLI):
    """LightningCLI for an :class:`AdversarialModule` and an :class:`AdversarialDataModule` (subclass mode).

    After ``fit`` it tests the final weights (``--test_after_fit false`` to skip), writing
    ``metrics.json``, and logs a summary with the TensorBoard command.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After fit, test the final weights on the evaluation split and write metrics.json.")

    checkpoint_shapes: Optional[Dict[str, tuple]] = None

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyper-parameters of --ckpt_path here, before any class is built: a file that
        # is not a checkpoint ends with one message; the tensors' shapes are kept for check_checkpoint
        config = self.config[self.config["subcommand"]] if self.config.get("subcommand") else {}
        self.checkpoint_shapes = read_checkpoint_shapes(config.get("ckpt_path"), config.get("weights_only"))
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        self.check_checkpoint()

    def before_validate(self) -> None:
        self.check_checkpoint()

    def before_test(self) -> None:
        self.check_checkpoint()

    def check_checkpoint(self) -> None:
        """Refuse a ``--ckpt_path`` of another model before the trainer writes anything."""
        if self.checkpoint_shapes is not None:
            check_same_tensors(self.model, self.config_init[self.subcommand]["ckpt_path"], self.checkpoint_shapes)

    @staticmethod
    def configure_optimizers(lightning_module, optimizer, lr_scheduler=None):
        """As LightningCLI's, but a top-level ``lr_scheduler`` steps at the module's
        ``lr_scheduler_interval`` (``"step"`` for the cyclic schedule)."""
        configured = LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)
        interval = getattr(lightning_module.hparams, "lr_scheduler_interval", "epoch")
        if lr_scheduler is None or isinstance(configured, dict):
            return configured
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": interval}}

    def after_fit(self) -> None:
        if not self.config_init[self.subcommand].get("test_after_fit", True) or self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        self.summarize()

    def after_test(self) -> None:
        self.summarize()

    def summarize(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        lines = ["Summary on the evaluation split:"]
        for key, label in (("test/err", "clean error"), ("test/rerr_pgd", "PGD robust error"),
                           ("test/rloss_pgd", "PGD robust loss"), ("test/rerr_aa", "AutoAttack robust error"),
                           ("test/rerr_pgd_train", "PGD robust error (train)"),
                           ("test/rloss_pgd_train", "PGD robust loss (train)")):
            if key in metrics:
                lines.append(f"  {label:<26} {metrics[key]:.4f}")
        logger = self.trainer.logger
        if logger is not None and getattr(logger, "log_dir", None):
            lines.append(f"  TensorBoard logs in {logger.log_dir}")
            lines.append(f"  view them with: tensorboard --logdir {os.path.dirname(logger.log_dir)}")
        rank_zero_info("\n".join(lines))


def main(args: Optional[list] = None) -> None:
    """Entry point of ``train.py``; bad settings end with one message and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        RobustCLI(AdversarialModule, AdversarialDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0,
                  save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False}, args=args)
    except argparse.ArgumentError as error:
        sys.stderr.write(f"error: {one_line(str(error))}\n")
        sys.exit(2)
    except (ConfigurationError, ValueError) as error:
        cause = configuration_error(error)
        if cause is None and UNION_ERROR not in str(error):
            raise
        sys.stderr.write(f"error: {cause or one_line(str(error))}\n")
        sys.exit(2)
    except FloatingPointError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(1)


def configuration_error(error: BaseException) -> Optional[ConfigurationError]:
    """The :class:`ConfigurationError` behind ``error``: itself, a cause, or one named in jsonargparse's
    message when it wraps the error of a class it failed to instantiate."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigurationError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


UNION_ERROR = "Does not validate against any of the Union subtypes"
NOISE = (UNION_ERROR, "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'NoneType'>")


def one_line(message: str) -> str:
    """jsonargparse's nested error message on one line: the setting and what is wrong with it, without the
    lists of types it tried."""
    parts, given = [], None
    for line in message.splitlines():
        line = line.strip()
        if not line or line.startswith(NOISE):
            continue
        if line.startswith("Given value:"):
            given = given or line[len("Given value:"):].strip()
            continue
        line = re.sub(r'^(- )?Parser key "([^"]+)":', r"\1\2:", line)
        line = line[2:] if line.startswith("- ") else line
        if line not in parts:
            parts.append(line)
    text = " ".join(parts)
    if given and "NestedArg(" not in given and given not in text:
        text += f" (given: {given})"
    return text


SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")


def read_checkpoint_shapes(ckpt_path: Optional[str],
                           weights_only: Optional[bool] = None) -> Optional[Dict[str, tuple]]:
    """The shapes of the tensors in the ``state_dict`` of checkpoint ``ckpt_path``, by name.

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
    return {name: tuple(value.shape) for name, value in state.items()}


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
