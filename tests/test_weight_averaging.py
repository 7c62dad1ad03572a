"""WeightAveraging: supplement Eq. 8 of Stutz et al. 2021 checked against a reference written out independently, inside
Lightning's hooks: validation (with every callback, before or after it in the list), checkpoints and
test see the averaged weights; training continues from the current ones."""

import pickle

import pytest
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint

from lit_robust.callbacks import ExponentialMovingAverage, RobustEarlyStopping, WeightAveraging
from lit_robust.errors import ConfigurationError
from tests.helpers import close, snapshot, tiny_pgdat, tiny_trainer

DECAY = 0.8


class Reference(Callback):
    """Eq. 8 written out: w_bar(1) = w(1), w_bar(t) = tau w_bar(t-1) + (1 - tau) w(t) after each step."""

    def __init__(self, decay, average_buffers):
        self.decay, self.average_buffers = decay, average_buffers
        self.average = None
        self.current = None
        self.at_validation = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.current = snapshot(pl_module)
        parameters = {name for name, _ in pl_module.named_parameters()}
        if self.average is None:
            self.average = {name: value.clone() for name, value in self.current.items()}
            return
        for name, value in self.current.items():
            averaged = name in parameters or (self.average_buffers and value.is_floating_point())
            self.average[name] = (self.decay * self.average[name] + (1 - self.decay) * value) if averaged else value

    def on_validation_epoch_end(self, trainer, pl_module):
        self.at_validation[trainer.current_epoch] = {k: v.clone() for k, v in self.average.items()}


class SeesAveraged(Callback):
    """Asserts that every validation hook sees the averaged weights, and training the current ones."""

    def __init__(self, reference):
        self.reference = reference
        self.checks = 0

    def _averaged(self, pl_module):
        assert close(snapshot(pl_module), self.reference.average)
        self.checks += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._averaged(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._averaged(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        assert close(snapshot(pl_module), self.reference.current)
        self.checks += 1

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._averaged(pl_module)


@pytest.mark.parametrize("average_buffers", [True, False])
def test_every_hook_sees_eq_8_and_checkpoints_hold_it(digits, tmp_path, average_buffers):
    reference = Reference(DECAY, average_buffers)
    # checkers on both sides of the averaging callback, and an early-stopping checkpoint written
    # while the averaged weights are in the module (before the averaging callback's on_validation_end)
    before, after = SeesAveraged(reference), SeesAveraged(reference)
    stopping = RobustEarlyStopping(every_n_epochs=1, steps=1, restarts=1, dirpath=str(tmp_path))
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path), save_last=True)
    callbacks = [reference, before, stopping, WeightAveraging(decay=DECAY, average_buffers=average_buffers), after,
                 checkpoint]
    trainer = tiny_trainer(callbacks, enable_checkpointing=True)
    module = tiny_pgdat()
    trainer.fit(module, datamodule=digits)
    assert before.checks == after.checks == 2 * 3  # per epoch: one batch, epoch end, train epoch end

    for path, epoch in ((tmp_path / "last.ckpt", 1), (tmp_path / "early_stopping.ckpt", stopping.best_epoch)):
        saved = torch.load(path, weights_only=True)
        assert close(saved["state_dict"], reference.at_validation[epoch]), path
    assert close(torch.load(tmp_path / "last.ckpt", weights_only=True)["current_model_state"], reference.current)
    assert not close(reference.average, reference.current)  # averaging changes something

    assert close(snapshot(module), reference.average)  # fit ends with the averaged weights
    trainer.test(module, datamodule=digits, verbose=False)
    assert before.checks == after.checks == 2 * 3 + 1


def test_averaging_function_is_eq_8_and_pickles():
    average = ExponentialMovingAverage(0.99)
    restored = pickle.loads(pickle.dumps(average))  # ddp_spawn pickles the callbacks
    w_bar, w = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    count, count_now = torch.tensor([5]), torch.tensor([9])
    restored([w_bar, count], [w, count_now], torch.tensor(1))
    assert torch.allclose(w_bar, 0.99 * torch.tensor([1.0, -2.0]) + 0.01 * w)
    assert count.item() == 9  # a counter is copied, not averaged
    pickle.dumps(WeightAveraging(decay=0.99))


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ConfigurationError, match="decay"):
        WeightAveraging(decay=decay)
