"""The measures as a registry: a measure defined here (outside lit_robust) used by name from FlatnessMonitor; an
unknown name refused with the registered names; the monitors on a user's own LightningModule and data module
(network attribute, threat model as settings, loaders' collate_fn, (x, y, index) and dict batches)."""

import pytest
import torch
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset, default_collate

from lit_robust.callbacks import FlatnessMonitor, FlatnessSettings, LandscapeMonitor
from lit_robust.errors import ConfigurationError
from lit_robust.measures import Measure, MeasureResult, average_case_flatness, hessian_trace, register_measure
from lit_robust.measures.base import reduced
from lit_robust.models import SmallCNN

EPSILON, STEP = 0.1, 0.025
SETTINGS = FlatnessSettings(examples=24, samples=2, pgd_steps=2, pgd_restarts=1, ascent_iterations=1,
                            ascent_restarts=1, hutchinson_samples=2)


@register_measure("test_margin")
class Margin(Measure):
    """Mean over examples of the largest logit minus the true class's logit (clean; larger: sharper)."""

    loss = "loss"

    @property
    def name(self) -> str:
        return "test_margin"

    def measure(self, model, batches, reduce, generator) -> MeasureResult:
        totals = torch.zeros(2, dtype=torch.float64)
        for x, y in batches:
            with torch.no_grad():
                logits = model(x)
            totals += torch.stack([torch.tensor(float(len(y))),
                                   (logits.max(dim=1).values - logits.gather(1, y[:, None])[:, 0]).sum().double()])
        totals = reduced(totals, reduce, self.name)
        value = float(totals[1] / totals[0])
        return MeasureResult(flatness=value, std=0.0, perturbed=value, reference=0.0, examples=int(totals[0]))


def images(count=40):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 1, 8, 8), generator=generator, dtype=torch.uint8)
    return pixels, torch.randint(0, 10, (count,), generator=generator)


def scaled_with_index(examples):
    """A user's collate_fn: uint8 images to [0, 1] floats, batches (x, y, index)."""
    x, y, index = default_collate(examples)
    return x.float() / 255, y, index


def as_dict(examples):
    x, y = default_collate(examples)
    return {"pixels": x, "target": y}


class Data(LightningDataModule):
    """The same images as uint8 scaled in the collate_fn with (x, y, index) batches, as dicts, or as floats."""

    def __init__(self, form: str) -> None:
        super().__init__()
        pixels, labels = images()
        if form == "uint8":
            self.dataset = TensorDataset(pixels, labels, torch.arange(len(labels)))
            self.collate = scaled_with_index
        else:
            self.dataset = TensorDataset(pixels.float() / 255, labels)
            self.collate = as_dict if form == "dict" else default_collate

    def test_dataloader(self):
        return DataLoader(self.dataset, batch_size=10, collate_fn=self.collate)

    def train_eval_dataloader(self):
        return self.test_dataloader()


class Own(LightningModule):
    """A user's module: its network is ``self.net``, it has no threat model, its test step does nothing."""

    def __init__(self, batch_keys=None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = SmallCNN(width=2, num_classes=10)
        self.tested = 0
        if batch_keys is not None:
            self.batch_keys = batch_keys

    def test_step(self, batch, batch_idx):
        self.tested += 1


def measured_by(module, data, callback):
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False, callbacks=[callback], limit_test_batches=1)
    trainer.test(module, datamodule=data, verbose=False)
    return trainer


def flatness(form, measures=("avg_rloss", "worst_loss", "hessian_trace_rloss", "test_margin"), **kwargs):
    monitor = FlatnessMonitor(measures=list(measures), test=SETTINGS, batch_size=8, test_splits=("eval",),
                              network="net", epsilon=EPSILON, step_size=STEP, parallel=1, **kwargs)
    measured_by(Own(("pixels", "target") if form == "dict" else None), Data(form), monitor)
    return monitor.results


def test_a_measure_defined_outside_the_library_is_used_by_name_and_the_users_loaders_are_measured():
    floats = flatness("float")
    # the registered measure, by name, against the same quantity computed here on the first 24 examples
    x, y = images()[0][:24].float() / 255, images()[1][:24]
    with torch.no_grad():
        logits = Own().net.eval()(x)
    margin = (logits.max(dim=1).values - logits.gather(1, y[:, None])[:, 0]).mean()
    assert floats["flatness/test_margin"].flatness == pytest.approx(float(margin), abs=1e-6)
    assert floats["flatness/test_margin"].examples == 24
    # what the loaders yield: uint8 scaled by their collate_fn in (x, y, index) batches, and dict batches
    for form in ("uint8", "dict"):
        for name, result in flatness(form).items():
            assert result.flatness == pytest.approx(floats[name].flatness, abs=1e-6), (form, name)


def test_a_measure_instance_keeps_its_own_settings():
    results = flatness("float", measures=["avg_rloss", Margin(max_examples=8)])
    assert results["flatness/test_margin"].examples == 8
    assert results["flatness/avg_rloss"].examples == 24


def test_an_unknown_measure_name_is_refused_with_the_registered_names():
    with pytest.raises(ConfigurationError) as error:
        FlatnessMonitor(measures=["avg_rloss", "hessian_trace_rlos"])
    message = str(error.value)
    assert "\n" not in message and "hessian_trace_rlos" in message
    for name in ("avg_rloss", "worst_loss", "adaptive_worst_rloss_linf", "pac_bayes_mag_rerr", "hessian_trace_rloss",
                 "test_margin"):
        assert name in message


def test_missing_threat_model_and_network_are_refused_at_setup_before_any_batch():
    module = Own()
    with pytest.raises(ConfigurationError, match=r"^epsilon and step_size not set: FlatnessMonitor needs"):
        measured_by(module, Data("float"), FlatnessMonitor(network="net", test=SETTINGS))
    with pytest.raises(ConfigurationError, match=r"^network='model' is not allowed: .*its submodules: net"):
        measured_by(module, Data("float"), FlatnessMonitor(epsilon=EPSILON, step_size=STEP, test=SETTINGS))
    with pytest.raises(ConfigurationError, match=r"^network='model' is not allowed"):
        measured_by(module, Data("float"), LandscapeMonitor(epsilon=EPSILON, step_size=STEP))
    assert module.tested == 0


def test_measures_called_directly_refuse_inputs_outside_the_unit_interval():
    model = SmallCNN(width=2, num_classes=10)
    x, y = images()
    normalised = [(x[:8].float() / 255 * 4 - 2, y[:8])]
    with pytest.raises(ConfigurationError, match=r"^inputs='\[-2.*models take \[0, 1\] images"):
        average_case_flatness(model, normalised, samples=1, pgd_steps=1, reference_pgd_steps=1,
                              reference_pgd_restarts=1)
    with pytest.raises(ConfigurationError, match=r"^inputs='\[-2"):
        hessian_trace(model, normalised, samples=1, steps=1)


def test_landscape_monitor_on_a_users_module_measures_what_the_loader_yields():
    values = {}
    for form in ("float", "uint8"):
        monitor = LandscapeMonitor(network="net", epsilon=EPSILON, step_size=STEP, kinds=("random",), directions=1,
                                   steps=3, examples=8, attack_steps=1, hessian_iterations=3, png=False)
        trainer = measured_by(Own(), Data(form), monitor)
        values[form] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("flatness/")}
    assert set(values["float"]) == {"flatness/lambda_max", "flatness/input_lambda_max"}
    for name, value in values["float"].items():
        assert values["uint8"][name] == pytest.approx(value, rel=1e-5), name


def test_yaml_measures_take_names_and_class_path_instances(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(FlatnessMonitor, "monitor")
    config = parser.parse_string("""
monitor:
  measures:
    - avg_rloss
    - class_path: lit_robust.measures.HessianTrace
      init_args: {loss: loss, samples: 3}
""")
    monitor = parser.instantiate_classes(config).monitor
    assert monitor.measures[0] == "avg_rloss"
    assert monitor.measures[1].name == "hessian_trace_loss" and monitor.measures[1].samples == 3


def test_clean_measures_alone_need_no_threat_model():
    monitor = FlatnessMonitor(measures=["avg_loss", "hessian_trace_loss"], network="net", test=SETTINGS, batch_size=8,
                              test_splits=("eval",), parallel=1)
    measured_by(Own(), Data("float"), monitor)
    assert set(monitor.results) == {"flatness/avg_loss", "flatness/hessian_trace_loss"}
