"""The command line: LightningCLI with the project's defaults, a test after fit and a summary."""

import logging
import os
import sys
from typing import Optional

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError
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
                  save_config_kwargs={"overwrite": True}, args=args)
    except (ConfigurationError, ValueError) as error:
        cause = configuration_error(error)
        if cause is None:
            raise
        sys.stderr.write(f"error: {cause}\n")
        sys.exit(2)


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
