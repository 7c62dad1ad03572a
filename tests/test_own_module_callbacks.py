"""The callbacks on a LightningModule of one's own (not an AdversarialModule): RobustEarlyStopping takes the
threat model and the network as settings (norm L-inf by default; everything missing named at once, at setup,
before the first batch) and reads dict batches under the module's ``batch_keys``; RobustOverfitting warns once
when the module logs no ``val/rloss`` or ``train/rloss``; weight averaging, clipping and SWA work."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.attacks import PGD
from lit_robust.callbacks import (
    RobustEarlyStopping,
    RobustOverfitting,
    StochasticWeightAveraging,
    WeightAveraging,
    WeightClipping,
)
from lit_robust.errors import ConfigurationError
from lit_robust.weights import select_parameters
from tests.helpers import tiny_pgdat, tiny_trainer

KEYS = ("pixels", "class")


class Own(LightningModule):
    """Adversarial training of one's own: the network under ``net``, dict batches under ``batch_keys``."""

    batch_keys = KEYS

    def __init__(self, log_robust_losses: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.attack = PGD(0.1, 0.05, 1)
        self.log_robust_losses = log_robust_losses
        self.steps = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch[KEYS[0]], batch[KEYS[1]]
        loss = F.cross_entropy(self.net(self.attack(self.net, x, y)), y)
        self.log("train/rloss" if self.log_robust_losses else "train/objective", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[KEYS[0]], batch[KEYS[1]]
        self.log("val/rloss" if self.log_robust_losses else "val/objective",
                 F.cross_entropy(self.net(self.attack(self.net, x, y)), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def images():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(24, 1, 4, 4, generator=generator), torch.randint(0, 3, (24,), generator=generator)


def dict_batches(examples):
    x, y = zip(*examples)
    return {KEYS[0]: torch.stack(x), KEYS[1]: torch.stack(y)}


def loader():
    return DataLoader(TensorDataset(*images()), batch_size=8, collate_fn=dict_batches)


def fit(module, callbacks, **kwargs):
    trainer = tiny_trainer(callbacks, **kwargs)
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    return trainer


def test_early_stopping_names_every_missing_setting_at_once():
    with pytest.raises(ConfigurationError, match=r"^epsilon and step_size not set: RobustEarlyStopping needs "
                                                 r"epsilon, step_size \(norm defaults to 'linf'\)"):
        RobustEarlyStopping().setup(tiny_trainer([]), LightningModule(), "fit")


@pytest.mark.parametrize("network", ["model", "layers", lambda module: module.attack])
def test_early_stopping_refuses_a_network_it_cannot_find_before_the_first_batch(network, tmp_path):
    module = Own()
    with pytest.raises(ConfigurationError, match=r"^network=.* is not allowed: .*\(its submodules: net\)"):
        fit(module, [RobustEarlyStopping(epsilon=0.1, step_size=0.05, network=network, dirpath=str(tmp_path))])
    assert module.steps == 0


@pytest.mark.parametrize("network", ["net", lambda module: module.net])
def test_early_stopping_on_an_own_module_matches_the_written_out_robust_error(network, tmp_path):
    stopping = RobustEarlyStopping(every_n_epochs=1, steps=2, restarts=1, epsilon=0.1, step_size=0.05,
                                   network=network, dirpath=str(tmp_path))
    seen = []

    class WrittenOut(RobustOverfitting):
        def on_validation_end(self, trainer, pl_module):
            x, y = images()
            net = pl_module.net
            attack = PGD(0.1, 0.05, 2, random_start=False)
            with torch.no_grad():
                wrong = net(x).argmax(1) != y
            wrong |= net(attack(net, x, y)).argmax(1) != y
            seen.append((float(trainer.callback_metrics["early_stopping/rerr"]), wrong.float().mean().item()))

    module = Own()
    trainer = tiny_trainer([stopping, WrittenOut()], limit_val_batches=None)
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert (stopping.attack.norm, stopping.attack.epsilon, stopping.attack.step_size) == ("linf", 0.1, 0.05)
    assert not stopping.reuse_validation
    stopping.attack.random_start = False  # from here on reproducible: the written-out value must agree
    trainer.fit_loop.max_epochs = 3
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    assert len(seen) == 3 and seen[-1][0] == pytest.approx(seen[-1][1], abs=1e-6)


def test_robust_overfitting_warns_once_when_its_metrics_are_not_logged():
    overfitting = RobustOverfitting()
    with pytest.warns(UserWarning, match=r"RobustOverfitting: the module logs no val/rloss and no train/rloss") as got:
        fit(Own(log_robust_losses=False), [overfitting], max_epochs=3)
    assert sum("RobustOverfitting" in str(w.message) for w in got) == 1
    assert overfitting.summary() == {}
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        fit(Own(), [RobustOverfitting()], max_epochs=2)
        tiny_trainer([RobustOverfitting()]).fit(tiny_pgdat(), train_dataloaders=DataLoader(
            TensorDataset(torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))), batch_size=8),
            val_dataloaders=DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))),
                                       batch_size=8))
    assert not [w for w in quiet if "RobustOverfitting" in str(w.message)]


@pytest.mark.parametrize("averaging", [WeightAveraging(decay=0.5), StochasticWeightAveraging(swa_start=0)],
                         ids=["ema", "swa"])
def test_weight_averaging_clipping_and_swa_on_an_own_module(averaging):
    module = Own()
    fit(module, [averaging, WeightClipping(max_value=0.2)])
    clipped = torch.cat([p.detach().flatten() for _, p in select_parameters(module, "all")])  # no BN scales
    assert module.steps == 6 and float(clipped.abs().max()) <= 0.2 + 1e-6
    average = averaging._average_model.module
    assert all(torch.equal(a, b) for a, b in zip(average.state_dict().values(), module.state_dict().values()))
