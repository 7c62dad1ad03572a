"""The contracts a run relies on, checked before they can silently change a number: images in [0, 1] (in a run,
and in every attack and evaluation called directly), threat-model settings in range (the module's and every
callback's), attacks outside inference mode."""

import pytest
import torch
from pytorch_lightning import LightningDataModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.attacks import FGSM, PGD, FriendlyPGD
from lit_robust.attacks.evaluation import autoattack_wrong, clean_and_robust, evaluate
from lit_robust.callbacks import RobustEarlyStopping
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT

SMALL = dict(epsilon=0.1, step_size=0.025, train_steps=1, val_steps=1, val_restarts=1, test_steps=1,
             test_restarts=1, test_on_train=False)


class Images(LightningDataModule):
    """Digits-shaped images in [low, high]."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        x = low + (high - low) * torch.rand(16, 1, 8, 8, generator=generator)
        self.data = TensorDataset(x, torch.randint(0, 10, (16,), generator=generator))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8)

    val_dataloader = test_dataloader = train_dataloader


def trainer(**kwargs):
    options = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    options.update(kwargs)
    return Trainer(**options)


@pytest.mark.parametrize("stage", ["fit", "validate", "test"])
def test_normalised_inputs_stop_the_run_naming_the_contract(stage):
    module = PGDAT(SmallCNN(width=4), **SMALL)
    with pytest.raises(ConfigurationError, match=r"inputs=.* models take \[0, 1\] images and normalise them inside"):
        getattr(trainer(num_sanity_val_steps=0), stage)(module, datamodule=Images(-1.0, 1.0))


def test_inputs_in_range_pass():
    trainer(limit_train_batches=1, limit_val_batches=1).fit(PGDAT(SmallCNN(width=4), **SMALL),
                                                              datamodule=Images(0.0, 1.0))


def test_test_in_inference_mode_fails_with_the_attacks_message():
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        trainer(inference_mode=True).test(PGDAT(SmallCNN(width=4), **SMALL), datamodule=Images(0.0, 1.0))


@pytest.mark.parametrize("setting, kwargs", [
    ("epsilon", dict(epsilon=1.5)),
    ("epsilon", dict(epsilon=0.0)),
    ("epsilon", dict(epsilon=float("nan"))),
    ("epsilon", dict(epsilon=-0.5, norm="l2")),
    ("epsilon", dict(epsilon=float("inf"), norm="l2")),
    ("train_epsilon", dict(train_epsilon=1.2)),
    ("train_epsilon", dict(train_epsilon=-0.1)),
    ("step_size", dict(step_size=0.0)),
    ("step_size", dict(step_size=0.5)),  # longer than the ball's diameter 2 * 0.1
    ("step_size", dict(train_epsilon=0.01, step_size=0.025)),  # longer than the training ball's diameter
])
def test_module_threat_model_out_of_range(setting, kwargs):
    with pytest.raises(ConfigurationError, match=rf"^{setting}=.* is not allowed: {setting} must be"):
        PGDAT(SmallCNN(width=4), **{**SMALL, **kwargs})


def test_l2_threat_model_takes_radii_above_one():
    PGDAT(SmallCNN(width=4), **{**SMALL, "epsilon": 2.0, "step_size": 0.5, "norm": "l2"})


@pytest.mark.parametrize("setting, kwargs", [
    ("epsilon", dict(epsilon=1.5)),
    ("epsilon", dict(epsilon=0.0)),
    ("epsilon", dict(epsilon=-1.0, norm="l2")),
    ("step_size", dict(epsilon=0.03, step_size=0.5)),
    ("step_size", dict(step_size=-0.01)),
    ("norm", dict(norm="l1")),
])
def test_early_stopping_attack_out_of_range(setting, kwargs):
    with pytest.raises(ConfigurationError, match=rf"^{setting}=.* is not allowed"):
        RobustEarlyStopping(**kwargs)


def test_early_stopping_epsilon_alone_is_allowed():
    RobustEarlyStopping(epsilon=0.03)


def test_an_optimizer_instance_gets_a_message_asking_for_a_factory():
    network = SmallCNN(width=4)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match=r"^optimizer='SGD' is not allowed: .*functools.partial"):
        PGDAT(network, optimizer=optimizer, **SMALL)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(ConfigurationError, match=r"^lr_scheduler='StepLR' is not allowed: .*factory"):
        PGDAT(network, lr_scheduler=scheduler, **SMALL)


class NoTestSplit(LightningDataModule):
    """Training and validation loaders only."""

    def __init__(self) -> None:
        super().__init__()
        self.data = Images(0.0, 1.0).data

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8)

    val_dataloader = train_dataloader


def test_flatness_monitor_skips_what_a_data_module_without_test_split_cannot_give():
    from lit_robust.callbacks.flatness_monitor import FlatnessMonitor, FlatnessSettings

    monitor = FlatnessMonitor(fit=FlatnessSettings(examples=8, samples=1, pgd_steps=1, ascent_iterations=1),
                              batch_size=8)
    with pytest.warns(UserWarning, match="has no test_dataloader; the measures on the eval split are skipped"):
        trainer(limit_train_batches=1, limit_val_batches=1, callbacks=[monitor]).fit(
            PGDAT(SmallCNN(width=4), **SMALL), datamodule=NoTestSplit())
    assert monitor.results == {}


NORMALISED = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) - 0.5) * 4  # in [-2, 2]
LABELS = torch.tensor([0, 1, 2, 3])
CONTRACT = r"^inputs=.* is not allowed: inputs must be floating-point images in \[0, 1\]: models take \[0, 1\] images"


@pytest.mark.parametrize("attack", [PGD(0.031, 0.01, 2), PGD(0.5, 0.1, 2, norm="l2"), FGSM(0.031),
                                    FriendlyPGD(0.031, 0.01, 2)], ids=repr)
def test_attacks_refuse_inputs_outside_the_unit_interval_instead_of_clipping(attack):
    network = SmallCNN(width=4)
    with pytest.raises(ConfigurationError, match=CONTRACT):
        attack(network, NORMALISED, LABELS)
    with pytest.raises(ConfigurationError, match=CONTRACT + r".*uint8 pixels are divided by 255"):
        attack(network, (NORMALISED.abs() * 100).to(torch.uint8), LABELS)
    inside = NORMALISED.abs() / 2
    assert (attack(network, inside, LABELS) - inside).abs().max() <= attack.epsilon + 1e-6


def test_evaluation_refuses_inputs_outside_the_unit_interval():
    network, attack = SmallCNN(width=4), PGD(0.031, 0.01, 2)
    with pytest.raises(ConfigurationError, match=CONTRACT):
        clean_and_robust(network, NORMALISED, LABELS, attack)
    with pytest.raises(ConfigurationError, match=CONTRACT):
        evaluate(network, [(NORMALISED, LABELS)], attack, torch.device("cpu"))
    with pytest.raises(ConfigurationError, match=CONTRACT):
        autoattack_wrong(network, NORMALISED, LABELS, 0.031)
