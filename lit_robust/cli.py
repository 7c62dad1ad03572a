"""The command line: LightningCLI with the project's defaults, a test after fit and a summary."""

import argparse
import copy
import logging
import os
import pickle
import re
import sys
import traceback
import zipfile
from typing import Any, Dict, Optional

import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_robust.callbacks.hparams_session import HParamsSession
from lit_robust.callbacks.metrics_file import MetricsFile
from lit_robust.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError, check
from lit_robust.modules.base import AdversarialModule
from lit_robust.trainer_checks import check_trainer

TRAINER_DEFAULTS = {
    # attacks in validation and test need gradients
    "inference_mode": False,
    "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
               "init_args": {"save_dir": "logs", "name": "default"}},
}
# the trainer's settings that change what is trained, and the callbacks that do not (their settings are left out
# of the HParams session; their names are listed)
TRAINER_HPARAMS = ("max_epochs", "max_steps", "precision", "accumulate_grad_batches", "gradient_clip_val",
                   "gradient_clip_algorithm")
OBSERVING_CALLBACKS = ("RobustOverfitting", "FlatnessMonitor", "LandscapeMonitor", "MetricsFile", "HParamsSession",
                       "LearningRateMonitor", "ModelCheckpoint", "ModelSummary", "TQDMProgressBar",
                       "RichProgressBar", "Timer")


class RobustCLI(LightningCLI):
    """LightningCLI for an :class:`AdversarialModule` and an :class:`AdversarialDataModule` (subclass mode).

    After ``fit`` it tests the final weights (``--test_after_fit false`` to skip), writing
    ``metrics.json`` (:class:`~lit_robust.callbacks.metrics_file.MetricsFile`, added to every run), and logs a summary
    with the TensorBoard command. The whole configuration is TensorBoard's HParams session of the run, written at
    its start (:class:`~lit_robust.callbacks.hparams_session.HParamsSession`, added to every run with a TensorBoard
    logger, which writes no ``hp_metric`` of its own).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After fit, test the final weights on the evaluation split and write metrics.json.")
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="Let test, validate and predict run without --ckpt_path, on untrained weights.")

    checkpoint_shapes: Optional[Dict[str, tuple]] = None

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would load the hyper-parameters saved in --ckpt_path over the settings given here; what
        # the command line and the configs say wins instead, and only the weights come from the checkpoint. A
        # file that is not a checkpoint ends with one message; the tensors' shapes are kept for check_checkpoint
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if subcommand != "fit" and ckpt_path is None and not config.get("allow_untrained"):
            raise ConfigurationError(
                f"ckpt_path=None is not allowed for {subcommand}: it would evaluate untrained weights; give "
                f"--ckpt_path CHECKPOINT (or --allow_untrained true to do so on purpose).")
        if ckpt_path == "last":
            ckpt_path = config["ckpt_path"] = self.resolve_last(config)
        checkpoint = read_checkpoint(ckpt_path, config.get("weights_only"))
        if checkpoint is None:
            return
        self.checkpoint_shapes = {name: tuple(value.shape) for name, value in checkpoint["state_dict"].items()}
        if subcommand == "fit":
            check_resumable(ckpt_path, checkpoint.get("hyper_parameters") or {}, config["model"])

    @staticmethod
    def resolve_last(config: Any) -> str:
        """``--ckpt_path last``: the ``last.ckpt`` of the newest run of this configuration's TensorBoard logger
        (``save_dir/name/version_N``); the resumed run logs to that same version."""
        logger = namespace_to_dict(config["trainer"].get("logger"))
        init_args = logger.get("init_args") if isinstance(logger, dict) else None
        check(isinstance(init_args, dict) and init_args.get("save_dir") is not None, "ckpt_path", "last",
              "a checkpoint file when the configuration has no TensorBoard logger naming the run's directory")
        runs = os.path.join(init_args["save_dir"], init_args.get("name") or "lightning_logs")
        versions = sorted((int(entry[len("version_"):]), entry) for entry in
                          (os.listdir(runs) if os.path.isdir(runs) else [])
                          if re.fullmatch(r"version_\d+", entry)
                          and os.path.isfile(os.path.join(runs, entry, "checkpoints", "last.ckpt")))
        check(bool(versions), "ckpt_path", "last", f"given where a run wrote a last.ckpt: none under {runs}/version_*/"
              f"checkpoints (give the checkpoint file instead)")
        number, version = versions[-1]
        config["trainer"]["logger"]["init_args"]["version"] = number
        return os.path.join(runs, version, "checkpoints", "last.ckpt")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config["subcommand"]] if self.config.get("subcommand") else self.config
        check_trainer(namespace_to_dict(config["trainer"]))

    def after_instantiate_classes(self) -> None:
        # the network's configuration joins the module's hyper-parameters, so that hparams.yaml and the
        # checkpoints name the network that ran and load_from_checkpoint can build it again
        config = self.config[self.subcommand] if self.subcommand else self.config
        network = namespace_to_dict(config["model"]["init_args"].get("model"))
        if self.trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in self.trainer.callbacks):
            self.trainer.callbacks.insert(0, LearningRateMonitor())  # the schedule in TensorBoard (lr-SGD)
        if not any(isinstance(c, MetricsFile) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(MetricsFile())  # the test metrics in metrics.json, next to the logs
        tensorboard = [logger for logger in self.trainer.loggers if isinstance(logger, TensorBoardLogger)]
        for logger in tensorboard:
            # TensorBoard shows a run's first hparams summary only: HParamsSession's, not a placeholder hp_metric
            logger._default_hp_metric = False
        if tensorboard and not any(isinstance(c, HParamsSession) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(HParamsSession(hparams=self.configuration(config)))
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last is None:
                callback.save_last = True  # every run can be resumed with --ckpt_path last
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if isinstance(network, dict) and isinstance(self.model, AdversarialModule):
            self.model.hparams["model"] = network
            self.model._hparams_initial["model"] = copy.deepcopy(network)

    def before_fit(self) -> None:
        self.check_checkpoint()

    def _add_configure_optimizers_method_to_model(self, subcommand: Optional[str]) -> None:
        # LightningCLI builds the optimiser and scheduler here, once, to check them: a bad setting of theirs (a
        # negative learning rate) ends with one message naming them
        try:
            super()._add_configure_optimizers_method_to_model(subcommand)
        except (ValueError, TypeError, KeyError) as error:
            frames = traceback.extract_tb(error.__traceback__)
            key = "lr_scheduler" if any("lr_scheduler" in frame.filename for frame in frames) else "optimizer"
            config = namespace_to_dict((self.config[subcommand] if subcommand else self.config).get(key)) or {}
            args = ", ".join(f"{name}={value!r}" for name, value in (config.get("init_args") or {}).items()
                             if value not in (None, False))
            raise ConfigurationError(f"{key}={config.get('class_path')}({args}) is not allowed: {error}.") from None

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

    def configuration(self, config: Any) -> Dict[str, Any]:
        """The run's configuration as hyper-parameters: module, network, attacks, optimiser, schedule, data, seed,
        the trainer's settings that change training (:data:`TRAINER_HPARAMS`) and the callbacks (the names of all,
        the settings of those that change training, under the class's name)."""
        config = namespace_to_dict(config)
        hparams = {key: value for key, value in config.items() if key not in ("trainer", "config")}
        module = (hparams.get("model") or {}).get("init_args") or {}
        for key in ("optimizer", "lr_scheduler"):  # the top-level optimiser and schedule are the ones that run
            if hparams.get(key) is not None and module.get(key) is None:
                module.pop(key, None)
        trainer = config.get("trainer") or {}
        hparams["trainer"] = {key: trainer.get(key) for key in TRAINER_HPARAMS if key in trainer}
        callbacks = [c for c in trainer.get("callbacks") or [] if isinstance(c, dict) and "class_path" in c]
        names = [c["class_path"].rsplit(".", 1)[-1] for c in callbacks]
        hparams["callbacks"] = names
        hparams.update({name: callback for name, callback in zip(names, callbacks) if name not in OBSERVING_CALLBACKS})
        return hparams

    def after_predict(self) -> None:
        """Write the predictions (``labels``, and ``adversarial_labels`` where asked) to ``predictions.pt``."""
        batches = self.trainer.predict_loop.predictions
        if not batches or self.trainer.global_rank != 0:
            return
        predictions = {key: torch.cat([batch[key] for batch in batches]).cpu() for key in batches[0]}
        directory = self.trainer.log_dir or self.trainer.default_root_dir
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "predictions.pt")
        torch.save(predictions, path)
        rank_zero_info(f"Predictions ({', '.join(predictions)}) of {len(predictions['labels'])} examples written "
                       f"to {path}")

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
    except MisconfigurationException as error:
        sys.stderr.write(f"error: {one_line(str(error))}\n")
        sys.exit(2)
    except (FloatingPointError, CheckpointWriteError) as error:
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
