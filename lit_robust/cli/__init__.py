"""The command line: LightningCLI with the project's defaults (:mod:`~lit_robust.cli.robust_cli`, the entry point
``main`` of ``train.py`` and ``lit-robust``), the checks of the trainer's settings and of ``--ckpt_path``, the
error messages on one line, atomic checkpoints, the run directory put back after a refused run, the callbacks'
states back from ``ddp_spawn``, and ``python -m lit_robust.cli.export`` (a checkpoint's network as a state dict)."""

from lit_robust.cli.robust_cli import TRAINER_DEFAULTS, MetricsFile, RobustCLI, main

__all__ = ["TRAINER_DEFAULTS", "MetricsFile", "RobustCLI", "main"]
