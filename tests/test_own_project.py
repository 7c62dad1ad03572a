"""lit_robust inside a project of one's own: its own ``callbacks`` package, its own network and LightningModule
(a training step of its own calling ``lit_robust.attacks.PGD``, the network under ``net``), its own data module
(uint8 images scaled to [0, 1] by its collate_fn, batches ``(x, y, index)``, no ``eval_batch_size``). PGDAT and
the project's module train with every lit_robust callback, from Python and from the project's own LightningCLI;
their ``test/*`` and ``flatness/*`` equal those of the same images given as float [0, 1] tensors with a plain
collate."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

OWN = '''
"""A project of one's own: network, LightningModule and data modules."""

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lit_robust.attacks import PGD

EPSILON, STEP_SIZE = 0.1, 0.05


def pixels(count, seed):
    """uint8 8x8 grey images of two classes: dark (label 0) and bright (label 1)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    noise = torch.randint(0, 128, (count, 1, 8, 8), generator=generator)
    return (noise + 127 * labels.view(-1, 1, 1, 1)).to(torch.uint8), labels


class Net(nn.Module):
    """The project's network; its initial weights depend on ``seed`` alone."""

    def __init__(self, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.BatchNorm1d(width), nn.ReLU(),
                                        nn.Linear(width, 2))

    def forward(self, x):
        return self.layers(x)


class OwnModule(LightningModule):
    """The project's adversarial training: its own steps, its network under ``net``, no threat_model."""

    def __init__(self, width: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.net = Net(width)
        self.attack = PGD(EPSILON, STEP_SIZE, steps=2)
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def robust(self, batch):
        x, y = batch[0], batch[1]
        logits = self.net(self.attack(self.net, x, y))
        return F.cross_entropy(logits, y), (logits.argmax(dim=1) != y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, _ = self.robust(batch)
        self.log("train/rloss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, error = self.robust(batch)
        self.log_dict({"val/rloss": loss, "val/rerr": error})

    def test_step(self, batch, batch_idx):
        loss, error = self.robust(batch)
        with torch.no_grad():
            clean = F.cross_entropy(self.net(batch[0]), batch[1])
        self.log_dict({"test/loss": clean, "test/rloss": loss, "test/rerr": error})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Pixels(Dataset):
    def __init__(self, count: int, seed: int) -> None:
        self.images, self.labels = pixels(count, seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], i


def scale(examples):
    """uint8 images to [0, 1] floats; batches (x, y, index)."""
    images, labels, index = zip(*examples)
    return torch.stack(images).float() / 255, torch.stack(labels), torch.tensor(index)


class OwnData(LightningDataModule):
    """Four loaders, uint8 data scaled in the collate_fn, batches (x, y, index), no eval_batch_size."""

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.sets = {"train": self.dataset(32, 0), "val": self.dataset(16, 1), "test": self.dataset(16, 2)}

    def dataset(self, count, seed):
        return Pixels(count, seed)

    def loader(self, split, shuffle=False):
        return DataLoader(self.sets[split], batch_size=self.batch_size, shuffle=shuffle, collate_fn=scale)

    def train_dataloader(self):
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.loader("val")

    def test_dataloader(self):
        return self.loader("test")

    def train_eval_dataloader(self):
        return self.loader("train")


class FloatData(OwnData):
    """The same images as float [0, 1] tensors, batches (x, y) by the default collate."""

    def dataset(self, count, seed):
        images, labels = pixels(count, seed)
        return TensorDataset(images.float() / 255, labels)

    def loader(self, split, shuffle=False):
        return DataLoader(self.sets[split], batch_size=self.batch_size, shuffle=shuffle)
'''

OWN_CALLBACKS = '''
"""The project's own callbacks package."""

from pytorch_lightning import Callback


class Remember(Callback):
    """Writes a file when fit starts, to show that the project's own callbacks ran beside lit_robust's."""

    def on_fit_start(self, trainer, pl_module):
        open("remembered.txt", "w").write(type(pl_module).__name__)
'''

MAIN = '''
"""The project's own command line."""

from pytorch_lightning.cli import LightningCLI


def main():
    cli = LightningCLI(run=False, trainer_defaults=dict(accelerator="cpu", inference_mode=False, logger=False,
                                                        enable_checkpointing=False, enable_progress_bar=False,
                                                        enable_model_summary=False))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    main()
'''

EPOCHS = 3
CHEAP = dict(examples=8, samples=1, pgd_steps=1, pgd_restarts=1, ascent_iterations=1, ascent_restarts=1,
             hutchinson_samples=1)
PGDAT_SETTINGS = dict(epsilon=0.1, step_size=0.05, train_steps=1, val_steps=1, val_restarts=1, test_steps=1,
                      test_restarts=1)


def callback_settings(module, averaging, root):
    """(class name, settings) of every lit_robust callback; ``network``, ``epsilon`` and ``step_size`` for the
    project's module, which has neither ``model`` nor ``threat_model``."""
    own = dict(network="net", epsilon=0.1, step_size=0.05) if module == "own" else {}
    average = (("WeightAveraging", dict(decay=0.9)) if averaging == "ema"
               else ("StochasticWeightAveraging", dict(swa_start=1)))
    return [average, ("WeightClipping", dict(max_value=0.5)),
            ("RobustEarlyStopping", dict(every_n_epochs=1, steps=1, restarts=1, dirpath=str(root), **own)),
            ("RobustOverfitting", {}),
            ("FlatnessMonitor", dict(every_n_epochs=1, batch_size=4, fit=CHEAP, test=CHEAP,
                                     measures=["avg_rloss", "worst_rloss", "avg_loss", "worst_loss",
                                               "hessian_trace_loss"], **own)),
            ("LandscapeMonitor", dict(kinds=["random"], directions=1, steps=3, examples=8, attack_steps=1,
                                      hessian_iterations=3, png=False, **own)),
            ("MetricsFile", {})]


def reported(metrics):
    """The numbers compared: every test/* and flatness/* metric."""
    return {name: value for name, value in metrics.items() if name.startswith(("test/", "flatness/"))}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The project's directory, importable as the current project (its own ``callbacks`` first)."""
    root = tmp_path / "project"
    (root / "callbacks").mkdir(parents=True)
    (root / "own.py").write_text(OWN)
    (root / "main.py").write_text(MAIN)
    (root / "callbacks" / "__init__.py").write_text(OWN_CALLBACKS)
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(root))
    for name in [name for name in sys.modules if name == "callbacks" or name.startswith("callbacks.")]:
        monkeypatch.delitem(sys.modules, name)
    yield root
    for name in set(sys.modules) - before:
        if name in ("own", "callbacks") or name.startswith("callbacks."):
            del sys.modules[name]


def fit_and_test(root, module, averaging, data):
    """Train and test from Python; the metrics the run wrote to metrics.json."""
    import own
    from pytorch_lightning import Trainer, seed_everything

    import callbacks as project_callbacks
    import lit_robust.callbacks as lit_callbacks
    from lit_robust.callbacks import FlatnessSettings
    from lit_robust.modules import PGDAT

    run = root / f"{module}_{averaging}_{data}"
    built = []
    for name, settings in callback_settings(module, averaging, run):
        settings = {k: FlatnessSettings(**v) if k in ("fit", "test") else v for k, v in settings.items()}
        built.append(getattr(lit_callbacks, name)(**settings))
    trainer = Trainer(max_epochs=EPOCHS, accelerator="cpu", inference_mode=False, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(run), callbacks=built + [project_callbacks.Remember()])
    seed_everything(0)
    network = PGDAT(own.Net(), **PGDAT_SETTINGS) if module == "pgdat" else own.OwnModule()
    datamodule = own.OwnData() if data == "uint8" else own.FloatData()
    trainer.fit(network, datamodule=datamodule)
    trainer.test(network, datamodule=datamodule)
    return json.loads((run / "metrics.json").read_text())


def cli_fit_and_test(root, module, averaging):
    """Train and test with the project's own LightningCLI in a subprocess run in the project's directory."""
    run = root / f"cli_{module}_{averaging}"
    model = ({"class_path": "lit_robust.modules.PGDAT", "init_args": {"model": {"class_path": "own.Net"},
                                                                     **PGDAT_SETTINGS}}
             if module == "pgdat" else {"class_path": "own.OwnModule"})
    callbacks = [{"class_path": f"lit_robust.callbacks.{name}", "init_args": settings}
                 for name, settings in callback_settings(module, averaging, run)]
    config = {"seed_everything": 0, "model": model, "data": {"class_path": "own.OwnData"},
              "trainer": {"max_epochs": EPOCHS, "default_root_dir": str(run),
                          "callbacks": callbacks + [{"class_path": "callbacks.Remember"}]}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "main.py", "--config", "config.yaml"], cwd=root, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, textwrap.shorten(done.stderr[-3000:], 3000)
    assert (root / "remembered.txt").read_text() == {"pgdat": "PGDAT", "own": "OwnModule"}[module]
    return json.loads((run / "metrics.json").read_text())


def assert_same(got, expected):
    assert reported(got).keys() == reported(expected).keys()
    for name, value in reported(expected).items():
        assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("module, averaging", [("pgdat", "ema"), ("own", "swa")])
def test_own_data_module_and_callbacks_from_python_give_the_float_numbers(project, module, averaging):
    got = fit_and_test(project, module, averaging, "uint8")
    expected = fit_and_test(project, module, averaging, "float")
    names = reported(expected)
    assert {"flatness/avg_rloss", "flatness/worst_loss", "flatness/hessian_trace_loss", "flatness/avg_rloss_train",
            "flatness/lambda_max", "flatness/input_lambda_max"} <= set(names)
    assert {"test/loss", "test/rloss" if module == "own" else "test/rloss_pgd"} <= set(names)
    if module == "pgdat":  # testing on training examples, as the project's train_eval_dataloader yields them
        assert {"test/loss_train", "test/rloss_pgd_train"} <= set(names)
        assert got["test/loss_train"] <= got["test/rloss_pgd_train"]
    assert "early_stopping/best_rerr" in got and "robust_overfitting/best_rloss" in got
    assert_same(got, expected)


@pytest.mark.parametrize("module, averaging", [("pgdat", "swa"), ("own", "ema")])
def test_own_lightning_cli_with_its_own_callbacks_package_gives_the_float_numbers(project, module, averaging):
    got = cli_fit_and_test(project, module, averaging)
    assert "early_stopping/best_rerr" in got and "robust_overfitting/best_rloss" in got
    assert_same(got, fit_and_test(project, module, averaging, "float"))
