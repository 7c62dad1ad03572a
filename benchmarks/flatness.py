"""Flatness: batched against sequential weight perturbations, and what FlatnessMonitor costs per epoch.

    python benchmarks/flatness.py [--epochs 3] [--only speed-up|cost]

1. Average- and worst-case flatness in RLoss at the paper's settings (10 weight samples with
   PGD-20 / 10 restarts of a 20-iteration joint ascent) on one batch of 128 digits, the K weight
   perturbations evaluated one after another on the model (``parallel=1``) and in one vectorised
   pass (``parallel=10``); prints both times and the speed-up, and that both give the same values
   (deterministic starts). The vectorised pass does the same arithmetic in fewer, larger
   operations: it pays where one small network leaves an accelerator (or a busy CPU) idle, and
   gains little on an idle CPU, where a batch of 128 already keeps the cores busy.
2. Trains ``configs/digits/at.yaml`` for a few epochs with ``FlatnessMonitor()`` (its per-epoch
   defaults) and prints, per epoch, the monitor's time as a fraction of the training epoch (the
   training batches, without validation), which the monitor keeps under 0.10.

Times are wall-clock and CPU time of this process (the latter less disturbed by other processes
on a shared machine); the ratios are what to compare.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from pytorch_lightning import Callback, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lit_robust.callbacks.flatness_monitor import FlatnessMonitor  # noqa: E402
from lit_robust.cli import TRAINER_DEFAULTS, RobustCLI  # noqa: E402
from lit_robust.data import AdversarialDataModule, DigitsDataModule  # noqa: E402
from lit_robust.measures.flatness import FlatnessMeasures  # noqa: E402
from lit_robust.modules import AdversarialModule  # noqa: E402


def clock() -> tuple:
    """Wall-clock and process CPU time, in seconds."""
    return time.perf_counter(), time.process_time()


def since(start: tuple) -> tuple:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def recipe(epochs: int):
    """Module and data module of configs/digits/at.yaml, as train.py builds them."""
    cli = RobustCLI(AdversarialModule, AdversarialDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0, run=False,
                    args=["--config", os.path.join(ROOT, "configs", "digits", "at.yaml"),
                          "--trainer.max_epochs", str(epochs), "--trainer.logger", "false"])
    return cli.model, cli.datamodule


def batched_against_sequential() -> None:
    torch.manual_seed(0)
    module, _ = recipe(1)
    datamodule = DigitsDataModule(eval_batch_size=128)
    datamodule.setup("test")
    batch = [next(iter(datamodule.test_dataloader()))]
    h = module.hparams
    print("1. one batch of 128 digits, SmallCNN, the paper's settings (epsilon, step size of the recipe)")
    for measure, label in (("avg_rloss", "average-case, 10 samples x PGD-20"),
                           ("worst_rloss", "worst-case, 10 restarts x 20 iterations")):
        times, values = {}, {}
        for parallel in (1, 10):
            meter = FlatnessMeasures(epsilon=h.epsilon, step_size=h.step_size, random_start=False,
                                     reference_pgd_steps=1, reference_pgd_restarts=1, parallel=parallel)
            start = clock()
            result = meter(module.model, batch, (measure,), generator=torch.Generator().manual_seed(0))[measure]
            times[parallel], values[parallel] = since(start), result.perturbed
        (wall_1, cpu_1), (wall_10, cpu_10) = times[1], times[10]
        print(f"   {label}: sequential {wall_1:.2f} s (CPU {cpu_1:.2f} s), "
              f"batched {wall_10:.2f} s (CPU {cpu_10:.2f} s), "
              f"speed-up x{wall_1 / wall_10:.2f} (CPU x{cpu_1 / cpu_10:.2f}); "
              f"first term {values[1]:.5f} vs {values[10]:.5f}")


class EpochClock(Callback):
    """Times the training batches of each epoch (up to the start of validation)."""

    def __init__(self) -> None:
        self.seconds = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = clock()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.seconds.append(since(self.start))


class TimedFlatnessMonitor(FlatnessMonitor):
    """FlatnessMonitor with its per-epoch defaults, recording how long each measurement takes."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = []

    def _measure(self, trainer, pl_module, stage) -> None:
        start = clock()
        super()._measure(trainer, pl_module, stage)
        self.seconds.append(since(start))


def monitor_cost(epochs: int) -> None:
    module, datamodule = recipe(epochs)
    epoch_clock, monitor = EpochClock(), TimedFlatnessMonitor()
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                      num_sanity_val_steps=0, callbacks=[epoch_clock, monitor])
    trainer.fit(module, datamodule=datamodule)
    print(f"2. FlatnessMonitor() during fit of configs/digits/at.yaml ({epochs} epochs)")
    walls, cpus = [], []
    for epoch, ((m_wall, m_cpu), (e_wall, e_cpu)) in enumerate(zip(monitor.seconds, epoch_clock.seconds)):
        walls.append(m_wall / e_wall)
        cpus.append(m_cpu / e_cpu)
        print(f"   epoch {epoch}: training {e_wall:.2f} s (CPU {e_cpu:.2f} s), monitor {m_wall:.2f} s "
              f"(CPU {m_cpu:.2f} s), fraction {walls[-1]:.3f} (CPU {cpus[-1]:.3f})")
    print(f"   median fraction of a training epoch: {statistics.median(walls):.3f} "
          f"(CPU {statistics.median(cpus):.3f}); budget 0.10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs for the monitor's cost")
    parser.add_argument("--only", choices=("speed-up", "cost"), help="run one of the two parts")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.only != "cost":
        batched_against_sequential()
    if args.only != "speed-up":
        monitor_cost(args.epochs)


if __name__ == "__main__":
    main()
