"""StochasticWeightAveraging: the equal average of the weights collected at epoch ends (Izmailov et al. 2018)
and batch normalisation's statistics recomputed on the training data, checked against references written out
independently; validation, early stopping and test see them; a resumed run ends like an uninterrupted one."""

import pickle

import pytest
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.callbacks import RobustEarlyStopping, StochasticWeightAveraging
from lit_robust.callbacks.swa import EqualAverage
from lit_robust.errors import ConfigurationError
from tests.helpers import close, snapshot, tiny_pgdat, tiny_trainer

SWA_START = 1


def loaders(seed=0):
    """A training loader of 4 equal batches in a fixed order, and a validation loader of one batch."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.rand(128, 1, 8, 8, generator=generator), torch.randint(0, 10, (128,), generator=generator)
    return (DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False),
            DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32))


class Reference(Callback):
    """Collects the weights at the end of epochs swa_start, swa_start + 1, ... and writes out their mean, and
    the first batch normalisation's running mean as the mean over the training batches of its input's batch
    mean at the averaged weights (torch's update_bn with equal batches)."""

    def __init__(self, train_loader):
        self.train_loader = train_loader
        self.collected = []
        self.average = None
        self.first_bn_mean = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == trainer.num_training_batches and trainer.current_epoch >= SWA_START:
            self.collected.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
            self.average = {n: torch.stack([c[n] for c in self.collected]).mean(0) for n in self.collected[0]}
            self.first_bn_mean = self.batch_norm_mean(pl_module)

    def batch_norm_mean(self, pl_module):
        network = pickle.loads(pickle.dumps(pl_module.model))
        network.load_state_dict({n[len("model."):]: v for n, v in self.average.items()}, strict=False)
        network.train()
        first = next(m for m in network.modules() if isinstance(m, nn.BatchNorm2d))
        means = []
        first.register_forward_hook(lambda m, args, out: means.append(args[0].mean(dim=(0, 2, 3))))
        with torch.no_grad():
            for x, _ in self.train_loader:
                network(x)
        return torch.stack(means).mean(0)


class SeesAverage(Callback):
    """Asserts that validation and test see the SWA weights once something is collected, the current before."""

    def __init__(self, reference):
        self.reference = reference
        self.checks = {"averaged": 0, "current": 0}

    def _check(self, trainer, pl_module):
        if self.reference.average is None:
            return
        assert close(snapshot(pl_module), self.reference.average)
        first = next(m for m in pl_module.model.modules() if isinstance(m, nn.BatchNorm2d))
        assert torch.allclose(first.running_mean, self.reference.first_bn_mean, atol=1e-5)
        self.checks["averaged"] += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch < SWA_START:
            self.checks["current"] += 1
        self._check(trainer, pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._check(trainer, pl_module)


def test_validation_early_stopping_and_test_see_the_swa_weights(tmp_path):
    train, val = loaders()
    reference = Reference(train)
    before, after = SeesAverage(reference), SeesAverage(reference)
    stopping = RobustEarlyStopping(every_n_epochs=1, steps=1, restarts=1, dirpath=str(tmp_path))
    callbacks = [reference, before, stopping, StochasticWeightAveraging(swa_start=SWA_START), after,
                 ModelCheckpoint(dirpath=str(tmp_path), save_last=True)]
    trainer = tiny_trainer(callbacks, max_epochs=3, limit_train_batches=None, enable_checkpointing=True)
    module = tiny_pgdat()
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    assert len(reference.collected) == 2
    assert before.checks == after.checks == {"averaged": 2, "current": 1}
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert close(last["state_dict"], reference.average)
    assert not close(last["current_model_state"], reference.average)  # averaging changes something
    trainer.test(module, dataloaders=val, verbose=False)
    assert before.checks["averaged"] == 3


def _fit(directory, max_epochs, ckpt_path=None):
    train, val = loaders()
    swa = StochasticWeightAveraging(swa_start=SWA_START)
    trainer = tiny_trainer([swa, ModelCheckpoint(dirpath=str(directory), save_last=True)], max_epochs=max_epochs,
                           limit_train_batches=None, enable_checkpointing=True, limit_val_batches=0)
    module = tiny_pgdat()
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
    return snapshot(module), swa.num_averaged


@pytest.mark.parametrize("first_epochs", [1, 2], ids=["before_swa_start", "after_swa_start"])
def test_resume_ends_like_an_uninterrupted_run(tmp_path, first_epochs):
    uninterrupted, count = _fit(tmp_path / "a", 4)
    _fit(tmp_path / "b", first_epochs)
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert int(saved["averaging_state"]["n_averaged"]) == first_epochs - SWA_START
    resumed, resumed_count = _fit(tmp_path / "b", 4, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert count == resumed_count == 3
    assert close(resumed, uninterrupted, atol=1e-5)


def test_equal_average_pickles_and_is_the_running_mean():
    average = pickle.loads(pickle.dumps(EqualAverage()))
    w_swa, w, counter = torch.tensor([1.0, -2.0]), torch.tensor([4.0, 1.0]), torch.tensor([3])
    average([w_swa, counter], [w, torch.tensor([7])], torch.tensor(2))
    assert torch.allclose(w_swa, (2 * torch.tensor([1.0, -2.0]) + w) / 3)
    assert counter.item() == 7


@pytest.mark.parametrize("kwargs, setting", [(dict(swa_start=-1), "swa_start"), (dict(cycle_epochs=0), "cycle_epochs")])
def test_bad_settings_are_refused(kwargs, setting):
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        StochasticWeightAveraging(**kwargs)
