"""Builders the tests share: small attack settings, tiny networks and trainers, one training step, and the
table of every variant exported by :mod:`lit_robust.modules` with what it needs to train on digits."""

import functools
import os
import socket

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import TensorDataset

from lit_robust import modules
from lit_robust.data import AdversarialDataModule, DigitsDataModule, PseudoLabeledDataModule
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT, AdversarialModule

SMALL_ATTACKS = dict(epsilon=0.1, step_size=0.025, val_steps=3, val_restarts=1, test_steps=5, test_restarts=2)
PSEUDO_LABEL = 7

# every variant the package exports: a class of lit_robust.modules with a training step of its own
VARIANTS = [getattr(modules, name) for name in modules.__all__
            if issubclass(getattr(modules, name), AdversarialModule)
            and getattr(modules, name).training_step is not LightningModule.training_step]


def small_network():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def small_digits(**kwargs):
    """A digits data module with small splits."""
    return DigitsDataModule(held_out_size=64, eval_size=64, train_eval_size=64, **kwargs)


def write_pseudo_labeled(path, count=40, images=None, labels=None):
    """An .npz of pseudo-labelled 8x8 grey images: by default all white and labelled PSEUDO_LABEL."""
    if images is None:
        images = np.full((count, 8, 8, 1), 255, dtype=np.uint8)
    if labels is None:
        labels = np.full(len(images), PSEUDO_LABEL, dtype=np.int64)
    np.savez(path, images=images, labels=labels)
    return str(path)


def teachers():
    return dict(robust_teacher=SmallCNN(width=8), standard_teacher=SmallCNN(width=8))


# what a variant needs beyond the network and the attack settings to train on digits: its row here
VARIANT_ARGUMENTS = {
    "KDSWA": teachers,
    "HAT": lambda: dict(standard_model=SmallCNN(width=8)),
}
# a variant whose training data is not plain digits: a function of (digits data module, temporary directory)
VARIANT_DATA = {
    "UnlabeledAT": lambda data, tmp_path: PseudoLabeledDataModule(data, write_pseudo_labeled(tmp_path / "pseudo.npz")),
}


def variant(cls, tmp_path, network=None, **kwargs):
    """``cls`` on a 4-channel SmallCNN (or ``network``) with one-step attacks, and the digits data it trains on."""
    settings = dict(epsilon=0.1, step_size=0.025, train_steps=1, val_steps=1, val_restarts=1)
    settings.update(VARIANT_ARGUMENTS.get(cls.__name__, dict)())
    settings.update(kwargs)
    module = cls(SmallCNN(width=4) if network is None else network, **settings)
    data = DigitsDataModule(held_out_size=32, eval_size=32, train_eval_size=32, batch_size=32)
    data = VARIANT_DATA.get(cls.__name__, lambda d, _: d)(data, tmp_path)
    return module, data


def small_pgdat():
    """A seeded PGDAT on a 4-channel SmallCNN with two-step training and validation attacks, one-step test."""
    torch.manual_seed(0)
    return PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=2, val_steps=2, val_restarts=1,
                 test_steps=1, test_restarts=1, test_on_train=False)


class RandomImages(AdversarialDataModule):
    """64 fixed random 8x8 images in every split (no scikit-learn import in the spawned processes)."""

    num_classes, image_shape = 10, (1, 8, 8)

    def setup(self, stage=None) -> None:
        generator = torch.Generator().manual_seed(0)
        images = TensorDataset(torch.rand(64, 1, 8, 8, generator=generator),
                               torch.randint(0, 10, (64,), generator=generator))
        self.train_set = self.held_out_set = self.eval_set = self.train_eval_set = images


def free_port() -> int:
    """A free TCP port on the loopback interface, for a process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_pgdat(cls=PGDAT, **kwargs):
    """PGDAT (or a subclass) with a 4-channel SmallCNN and 1-step attacks: fast, with batch normalisation."""
    seed_everything(0)
    settings = dict(epsilon=0.1, step_size=0.1, train_steps=1, val_steps=1, val_restarts=1, test_steps=1,
                    test_restarts=1, test_on_train=False,
                    optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    settings.update(kwargs)
    return cls(SmallCNN(width=4), **settings)


def tiny_trainer(callbacks, **kwargs):
    """A CPU trainer of two epochs of three batches, one validation and one test batch, writing nothing."""
    settings = dict(max_epochs=2, limit_train_batches=3, limit_val_batches=1, limit_test_batches=1,
                    accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False)
    settings.update(kwargs)
    return Trainer(callbacks=callbacks, **settings)


def trainer(tmp_path, **kwargs):
    """A one-process CPU trainer of one epoch without validation, writing nothing but under ``tmp_path``."""
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                    enable_checkpointing=False, enable_model_summary=False, inference_mode=False,
                    limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    defaults.update(kwargs)
    return Trainer(**defaults)


def robust_error_after_training(module, data, tmp_path, max_epochs):
    """PGD robust error on the evaluation split after ``max_epochs`` of training, single process."""
    run = trainer(tmp_path, max_epochs=max_epochs)
    run.fit(module, datamodule=data)
    return run.test(module, datamodule=data, verbose=False)[0]["test/rerr_pgd"]


def fit_and_test(module, datamodule, root, max_epochs=4):
    """Train ``module`` in one CPU process without validation, then test it; the test metrics."""
    run = trainer(root, max_epochs=max_epochs)
    run.fit(module, datamodule=datamodule)
    return run.test(module, datamodule=datamodule, verbose=False)[0]


def close(state, reference, atol=1e-6):
    return all(torch.allclose(state[name].float(), value.float(), atol=atol) for name, value in reference.items())


def snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def count_passes(module, batch):
    """(forward passes, backward passes reaching the input, backward passes reaching the weights) of one step."""
    counts = {"forward": 0, "input": 0, "weights": 0}

    def bump(key):
        counts[key] += 1

    def pre_hook(_, args):
        bump("forward")
        if args[0].requires_grad:
            args[0].register_hook(lambda grad: bump("input"))

    module.model.register_forward_pre_hook(pre_hook)
    first_weight = next(module.model.parameters())
    first_weight.register_hook(lambda grad: bump("weights"))
    module.log_dict = lambda *a, **k: None
    module.training_step(batch, 0)["loss"].backward()
    return counts["forward"], counts["input"], counts["weights"]


def step_and_attack(module, batch):
    """One training step of ``module`` in train mode; its loss and what its training attack returned."""
    module.train()
    module.log_dict = lambda *a, **k: None
    seen = {}
    original = module.train_attack.run
    module.train_attack.run = lambda *a, **k: seen.__setitem__("result", original(*a, **k)) or seen["result"]
    return module.training_step(batch, 0)["loss"], seen["result"]


class SaveWeightsPerRank(Callback):
    """Writes this process's final weights to ``rank<r>.pt`` in ``directory``."""

    def __init__(self, directory):
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        torch.save(weights, os.path.join(self.directory, f"rank{trainer.global_rank}.pt"))


def trained(model: nn.Module, x, y, steps: int, lr: float) -> nn.Module:
    """``model`` after ``steps`` full-batch SGD steps (momentum 0.9) on cross-entropy of ``(x, y)``, in eval
    mode with no gradients left in ``.grad``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


class OutOfRangeDigits(DigitsDataModule):
    """The digits data module with its images multiplied by ``scale``: inputs outside [0, 1] (as normalised
    images would be), for the first-batch input check."""

    def __init__(self, scale: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def load(self) -> tuple:
        images, labels = super().load()
        return images * self.scale, labels
