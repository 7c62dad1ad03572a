"""The cost of each flatness and sharpness measure relative to one training epoch of the digits recipe.

    python benchmarks/measures.py [--examples 32] [--test]

Trains ``configs/digits/at.yaml`` for one epoch (timing the training batches), then times each
measure of :class:`lit_robust.callbacks.FlatnessMonitor` once on the first ``--examples`` evaluation examples
with the monitor's per-epoch settings (``--test``: the settings of ``configs/callbacks/measures.yaml``
on 200 examples), in one run, and prints each time as a fraction of the epoch. Wall-clock and CPU
time of this process (the latter less disturbed on a shared machine).
"""

import argparse
import os
import sys
import time
import warnings

import torch
from pytorch_lightning import Callback, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lit_robust.attacks import ThreatModel  # noqa: E402
from lit_robust.callbacks.flatness_monitor import ALL_MEASURES, FlatnessMonitor, FlatnessSettings  # noqa: E402
from lit_robust.cli import TRAINER_DEFAULTS, RobustCLI  # noqa: E402
from lit_robust.data import AdversarialDataModule  # noqa: E402
from lit_robust.data.batches import FirstExamples  # noqa: E402
from lit_robust.measures import measure_named  # noqa: E402
from lit_robust.modules import AdversarialModule  # noqa: E402

# configs/callbacks/measures.yaml
TEST_SETTINGS = dict(test=FlatnessSettings(examples=200, samples=10, pgd_steps=10, pgd_restarts=3, ascent_iterations=10,
                                           ascent_restarts=3, adaptive_samples=4, hutchinson_samples=10),
                     pac_bayes_search_depth=5, pac_bayes_samples=1)


class EpochClock(Callback):
    """Times the training batches of the epoch (up to the start of validation)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter(), time.process_time()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.seconds = time.perf_counter() - self.start[0], time.process_time() - self.start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32, help="examples measured (per-epoch settings)")
    parser.add_argument("--test", action="store_true", help="the test settings of configs/callbacks/measures.yaml")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cli = RobustCLI(AdversarialModule, AdversarialDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0, run=False,
                    args=["--config", os.path.join(ROOT, "configs", "digits", "at.yaml"), "--trainer.max_epochs", "1",
                          "--trainer.logger", "false"])
    clock = EpochClock()
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                      num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(cli.model, datamodule=cli.datamodule)
    epoch_wall, epoch_cpu = clock.seconds
    stage = "test" if args.test else "fit"
    examples = 200 if args.test else args.examples
    batches = FirstExamples(cli.datamodule.test_dataloader(), examples, batch_size=128)
    h = cli.model.hparams
    attack = dict(epsilon=h.epsilon, step_size=h.step_size, norm=h.get("norm", "linf"))
    print(f"one training epoch of configs/digits/at.yaml: {epoch_wall:.2f} s (CPU {epoch_cpu:.2f} s); "
          f"{stage} settings, {examples} examples, 1 thread")
    total = 0.0
    threat_model = ThreatModel(**attack)
    for measure in ALL_MEASURES:
        monitor = FlatnessMonitor(measures=(measure,), **TEST_SETTINGS)
        start = time.perf_counter(), time.process_time()
        if measure in ("avg_rloss", "worst_rloss", "avg_loss", "worst_loss"):
            monitor._meter(stage, **attack)(cli.model.model, batches, (measure,))
        else:
            built = measure_named(measure, monitor.settings[stage], monitor.options).with_threat_model(threat_model)
            built(cli.model.model, batches, None, torch.Generator().manual_seed(0))
        wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
        if measure not in ("avg_rloss", "worst_rloss", "avg_loss", "worst_loss"):
            total += cpu
        print(f"  {measure:28s} {wall:7.2f} s (CPU {cpu:6.2f} s)  fraction of an epoch {wall / epoch_wall:6.3f} "
              f"(CPU {cpu / epoch_cpu:6.3f})")
    print(f"measures beyond the paper's together: CPU {total:.2f} s")


if __name__ == "__main__":
    main()
