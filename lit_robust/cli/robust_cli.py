"""The command line: LightningCLI with the project's defaults, a test after fit and a summary."""

import argparse
import copy
import logging
import os
import re
import sys
import traceback
from typing import Any, Dict, Optional, Tuple

import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lit_robust.callbacks.hparams_session import HParamsSession
from lit_robust.callbacks.metrics_file import MetricsFile
from lit_robust.cli.checkpoint_checks import (
    check_resumable,
    check_same_tensors,
    checkpoint_progress,
    namespace_to_dict,
    read_checkpoint,
)
from lit_robust.cli.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from lit_robust.cli.messages import UNION_ERROR, configuration_error, one_line
from lit_robust.cli.run_directory import restore, snapshot
from lit_robust.cli.spawn_results import keep_callback_states
from lit_robust.cli.trainer_checks import check_trainer
from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError, check
from lit_robust.metric_names import (
    TEST_ERR,
    TEST_RERR_AA,
    TEST_RERR_PGD,
    TEST_RERR_PGD_TRAIN,
    TEST_RLOSS_PGD,
    TEST_RLOSS_PGD_TRAIN,
)
from lit_robust.modules.base import AdversarialModule

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
                            help="Let test, validate and predict run without --ckpt_path, on untrained weights, "
                                 "and fit test and report weights it did not train (a fit that trains nothing).")

    checkpoint_shapes: Optional[Dict[str, tuple]] = None
    # the epochs, optimizer steps and training batches the --ckpt_path checkpoint had done: where a resumed fit starts
    checkpoint_progress: Tuple[int, int, int] = (0, 0, 0)

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
        self.checkpoint_progress = checkpoint_progress(checkpoint)
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

    def _run_subcommand(self, subcommand: str) -> None:
        # a check that refuses the run after the logger has written (those of the first batch) leaves nothing
        # behind: the log directories go back to what they held before
        before = snapshot(log_dir for logger in self.trainer.loggers
                          if isinstance(getattr(logger, "log_dir", None), str) for log_dir in [logger.log_dir])
        try:
            super()._run_subcommand(subcommand)
        except ConfigurationError:
            for logger in self.trainer.loggers:
                logger.finalize("failed")  # the event writers closed before their files go
            if self.trainer.global_rank == 0:
                restore(before)
            raise

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
        keep_callback_states(self.trainer)  # under ddp_spawn, the test after fit sees what the callbacks recorded
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if isinstance(network, dict) and isinstance(self.model, AdversarialModule):
            self.model.hparams["model"] = network
            self.model._hparams_initial["model"] = copy.deepcopy(network)

    def before_fit(self) -> None:
        self.check_checkpoint()
        trains = self.check_trains_something()
        # the callbacks' own checks against the trainer's settings, before the logger writes: their combination
        # always, their schedules when the test after fit reports what the run trained (a first part of a run to be
        # resumed with more epochs, --test_after_fit false, is only warned about at setup)
        tests = trains and self.config_init[self.subcommand].get("test_after_fit", True)
        for callback in self.trainer.callbacks:
            if callable(getattr(callback, "check_callbacks", None)):
                callback.check_callbacks(self.trainer)
            if tests and callable(getattr(callback, "check_schedule", None)):
                try:
                    callback.check_schedule(self.trainer)
                except ConfigurationError as error:
                    raise ConfigurationError(f"{error} (For the first part of a run resumed later with a larger "
                                             f"max_epochs, give --test_after_fit false.)") from None

    def check_trains_something(self) -> bool:
        """Refuse a fit that would run no training step (``max_epochs=0``, ``max_steps=0``,
        ``limit_train_batches=0``, or a resume of a run that already reached them) before anything is
        written: its test would report untrained weights as the run's result. ``--allow_untrained true``
        lets it run on purpose; returns whether the fit trains."""
        trainer, config = self.trainer, self.config_init[self.subcommand]
        epochs, steps, _ = self.checkpoint_progress
        problems = [(f"trainer.{name}", value, f"above 0: a fit with {name}=0 trains nothing")
                    for name, value in (("max_epochs", trainer.max_epochs), ("max_steps", trainer.max_steps),
                                        ("limit_train_batches", trainer.limit_train_batches)) if value == 0]
        problems += [(f"trainer.{name}", limit, f"above the {done} {name[4:]} that --ckpt_path "
                      f"{config.get('ckpt_path')} has done: resuming a finished run trains nothing")
                     for name, done, limit in (("max_epochs", epochs, trainer.max_epochs),
                                               ("max_steps", steps, trainer.max_steps))
                     if limit is not None and 0 < limit <= done]
        if problems and not config.get("allow_untrained"):
            setting, value, allowed = problems[0]
            check(False, setting, value, f"{allowed}, and its test would report untrained weights as the run's "
                  f"result (or --allow_untrained true to test these weights on purpose)")
        return not problems

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
        # what check_trains_something cannot know beforehand (an empty training loader): no training batch ran
        batches = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        check(batches > self.checkpoint_progress[2]
              or self.config_init[self.subcommand].get("allow_untrained"), "test_after_fit", True,
              "false when the fit ran no training step (no test of untrained weights is reported as the run's "
              "result; or --allow_untrained true to test them on purpose)")
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
        for key, label in ((TEST_ERR, "clean error"), (TEST_RERR_PGD, "PGD robust error"),
                           (TEST_RLOSS_PGD, "PGD robust loss"), (TEST_RERR_AA, "AutoAttack robust error"),
                           (TEST_RERR_PGD_TRAIN, "PGD robust error (train)"),
                           (TEST_RLOSS_PGD_TRAIN, "PGD robust loss (train)")):
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
