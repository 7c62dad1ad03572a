"""FlatnessMonitor: curves in TensorBoard and metrics.json through train.py, the weights of
validation under weight averaging, and one process against two (DDP, gloo)."""

import dataclasses
import functools
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import WeightAveraging as LightningWeightAveraging

from lit_robust.callbacks.flatness_monitor import PAPER_SETTINGS, FlatnessMonitor, FlatnessSettings
from lit_robust.errors import ConfigurationError
from lit_robust.weights import names_and_weights
from tests.conftest import ROOT, run_train
from tests.helpers import RandomImages, free_port, small_pgdat

CURVES = ["flatness/avg_rloss", "flatness/worst_rloss", "flatness/avg_loss", "flatness/worst_loss"]


def test_flatness_config_logs_the_curves_per_epoch_and_writes_metrics_json(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    at = os.path.join(ROOT, "configs", "digits", "at.yaml")
    config = os.path.join(ROOT, "configs", "callbacks", "flatness_monitor.yaml")
    code = run_train(["fit", "--config", at, "--config", config, "--trainer.max_epochs", "2",
                      "--trainer.limit_train_batches", "2",
                      "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
                      "--trainer.enable_progress_bar", "false", "--model.init_args.model.init_args.width", "4",
                      "--model.init_args.test_steps", "1", "--model.init_args.test_restarts", "1",
                      "--model.init_args.test_on_train", "false",
                      "--trainer.callbacks.fit.examples", "16", "--trainer.callbacks.fit.pgd_steps", "2",
                      "--trainer.callbacks.test.examples", "16", "--trainer.callbacks.test.samples", "2",
                      "--trainer.callbacks.test.pgd_steps", "2", "--trainer.callbacks.test.pgd_restarts", "1",
                      "--trainer.callbacks.test.ascent_iterations", "2", "--trainer.callbacks.test.ascent_restarts",
                      "1"],
                     cwd=str(tmp_path))
    assert code == 0
    run = tmp_path / "logs" / "digits_at" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    for curve in CURVES + ["flatness/avg_rloss_std", "flatness/avg_loss_std"]:
        values = [event.value for event in events.Scalars(curve)]
        assert len(values) == 3, curve  # two epochs and the test
        assert all(math.isfinite(v) for v in values)
    assert "flatness/avg_rloss_train" in tags  # measured on test only (fit_splits defaults to eval)
    metrics = json.loads((run / "metrics.json").read_text())
    for curve in CURVES:
        assert math.isfinite(metrics[curve]) and math.isfinite(metrics[curve + "_train"])


class WeightRecorder(Callback):
    """The selected weights after every optimiser step, to average them independently."""

    def __init__(self) -> None:
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append([w.detach().clone() for w in names_and_weights(pl_module.model)[1]])


class RecordingMonitor(FlatnessMonitor):
    """Records the weights it measures."""

    def _measure(self, trainer, pl_module, stage) -> None:
        self.measured = [w.detach().clone() for w in names_and_weights(pl_module.model)[1]]
        self.current = [w.detach().clone() for w in names_and_weights(trainer.callbacks[0]._average_model.module)[1]]
        super()._measure(trainer, pl_module, stage)


def test_measures_the_averaged_weights_whatever_the_callback_order(digits):
    # Lightning's WeightAveraging first: its on_validation_epoch_end swaps the current weights back
    # before a later callback's on_validation_epoch_end would run
    averaging, recorder = LightningWeightAveraging(), WeightRecorder()
    monitor = RecordingMonitor(fit=FlatnessSettings(examples=16, samples=2, pgd_steps=1, ascent_iterations=1),
                               measures=("avg_loss",))
    trainer = Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      inference_mode=False, num_sanity_val_steps=0, callbacks=[averaging, recorder, monitor])
    trainer.fit(small_pgdat(), datamodule=digits)
    average = [torch.stack(step).mean(dim=0) for step in zip(*recorder.steps)]
    assert len(recorder.steps) == 3
    assert all(torch.allclose(m, a, atol=1e-6) for m, a in zip(monitor.measured, average))
    assert all(torch.equal(c, last) for c, last in zip(monitor.current, recorder.steps[-1]))
    assert not torch.allclose(monitor.measured[0], monitor.current[0])
    assert "flatness/avg_loss" in trainer.callback_metrics


def test_settings_reach_the_meter_under_one_name_per_meaning():
    # the defaults: cheap per epoch, the paper's on test (Stutz et al. 2021, supplement Sec. D)
    monitor = FlatnessMonitor()
    assert monitor.settings == {"fit": FlatnessSettings(), "test": PAPER_SETTINGS}
    assert (PAPER_SETTINGS.examples, PAPER_SETTINGS.samples, PAPER_SETTINGS.hutchinson_samples) == (1000, 10, 100)
    # each setting goes to its own place: PGD steps / restarts to the reference (perturbed networks: one
    # restart), ascent iterations / restarts to the worst-case joint ascent
    settings = FlatnessSettings(examples=5, samples=4, pgd_steps=7, pgd_restarts=3, ascent_iterations=11,
                                ascent_restarts=2)
    meter = FlatnessMonitor(test=settings)._meter("test", epsilon=0.1, step_size=0.02, norm="linf")
    assert (meter.reference_attack.steps, meter.reference_attack.restarts) == (7, 3)
    assert (meter.average_attack.steps, meter.average_attack.restarts) == (7, 1)
    assert (meter.ascent_iterations, meter.ascent_restarts, meter.samples) == (11, 2, 4)


def test_every_n_epochs_and_checks():
    with pytest.raises(ConfigurationError, match="measures"):
        FlatnessMonitor(measures=("sharpness",))
    with pytest.raises(ConfigurationError, match="fit_splits"):
        FlatnessMonitor(fit_splits=("validation",))
    for stage in ("fit", "test"):
        for name in ("examples", "samples", "pgd_steps", "pgd_restarts", "ascent_iterations", "ascent_restarts",
                     "adaptive_samples", "hutchinson_samples"):
            with pytest.raises(ConfigurationError, match=rf"^{stage}\.{name}=0 is not allowed: .*integer >= 1"):
                FlatnessMonitor(**{stage: FlatnessSettings(**{name: 0})})
    with pytest.raises(ConfigurationError, match="^test="):
        FlatnessMonitor(test={"examples": 10})
    with pytest.raises(ConfigurationError, match="every_n_epochs"):
        FlatnessMonitor(every_n_epochs=-1)


def measured_during_fit(devices: int) -> dict:
    """One epoch of a fixed (seeded) module that does not change (learning rate 0, frozen batch-norm
    statistics), the monitor measuring 64 examples at validation; its results."""
    model = small_pgdat()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    model.optimizer = functools.partial(torch.optim.SGD, lr=0.0)
    # parallel=1: the in-place path, whose weight gradients must not reach DDP's gradient hooks
    monitor = FlatnessMonitor(batch_size=16, fit=FlatnessSettings(examples=64, samples=6, pgd_steps=2, pgd_restarts=2,
                                                                  ascent_iterations=2, ascent_restarts=2), parallel=1)
    strategy = "ddp" if devices > 1 else "auto"
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                      accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                      callbacks=[monitor])
    trainer.fit(model, datamodule=RandomImages(batch_size=32))
    return {name: dataclasses.asdict(result) for name, result in monitor.results.items()}


def ddp_worker(rank: int, world_size: int, port: int, directory: str) -> None:
    # the variables torchrun sets: Lightning then runs in this process instead of launching its own
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    torch.save(measured_during_fit(world_size), os.path.join(directory, f"rank{rank}.pt"))


def test_one_and_two_processes_agree(tmp_path):
    single = measured_during_fit(1)
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0] == ranks[1]  # every process logs the reduced result
    for name, one in single.items():
        two = ranks[0][name]
        assert two["examples"] == one["examples"] == 64  # each process measured its half, then summed
        # the reference is per example, so it does not depend on how the examples are split: exactly
        # for the clean loss, up to PGD's random starts for RLoss
        assert two["reference"] == pytest.approx(one["reference"], abs=1e-5 if name.endswith("_loss") else 0.05)
        # the perturbed term is a mean over random weight perturbations: equal within their noise
        noise = 4 * (one["std"] + two["std"]) + 1e-3
        assert abs(two["flatness"] - one["flatness"]) <= noise, name
