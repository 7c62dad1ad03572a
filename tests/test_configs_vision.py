"""Every config under configs/cifar10, cifar100, svhn and mnist runs through train.py on tiny data sets
written in the official on-disk formats, and the recipes hold the papers' settings.

A file that names the module, the network and the data module is a full recipe and runs alone; any other
file is a setting of its directory's ``at.yaml`` and runs after it (``--config at.yaml --config
file``), as the files' headers tell users. The configs are globbed at test time, so files added
later are covered. The network is made small (fewer channels, a shallower WideResNet), the data
tiny and the evaluation attacks short with command-line arguments after the configs; the files
themselves are parsed as written. A data module that wraps another one (``base``, as
PseudoLabeledDataModule) gets the data arguments on the wrapped one, and a pseudo-labelled file.
"""

import glob
import math
import os

import numpy as np
import pytest
import torch
import yaml

import lit_robust.data
from lit_robust.cli import TRAINER_DEFAULTS, RobustCLI
from lit_robust.data.base import AdversarialDataModule
from lit_robust.modules.base import AdversarialModule
from tests.conftest import ROOT, run_train
from tests.fakedata import write_cifar10, write_cifar100, write_mnist, write_svhn

VISION = ("cifar10", "cifar100", "svhn", "mnist")
CONFIGS = sorted(path for directory in VISION
                 for path in glob.glob(os.path.join(ROOT, "configs", directory, "**", "*.yaml"), recursive=True))
FAST = ["--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.init_args.val_steps", "1", "--model.init_args.val_restarts", "1",
        "--model.init_args.test_steps", "1", "--model.init_args.test_restarts", "1",
        "--model.init_args.autoattack", "false"]
SMALL_NETWORK = {
    "ResNet18": ["--model.init_args.model.init_args.width", "4"],
    "PreActResNet18": ["--model.init_args.model.init_args.width", "4"],
    "WideResNet": ["--model.init_args.model.init_args.depth", "10",
                   "--model.init_args.model.init_args.widen_factor", "1"],
    "SmallCNN": ["--model.init_args.model.init_args.width", "4"],
}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """All four fake data sets in one directory (their files do not collide)."""
    root = tmp_path / "data"
    for write in (write_cifar10, write_cifar100, write_svhn, write_mnist):
        write(root, monkeypatch, train_size=16, test_size=12)
    return str(root)


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _merge(into, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def merged(files):
    """The stacked configs as one dictionary, later files over earlier ones."""
    config = {}
    for path in files:
        _merge(config, _load(path))
    return config


def _is_recipe(config):
    model, data = config.get("model") or {}, config.get("data") or {}
    network = (model.get("init_args") or {}).get("model") or {}
    return all(isinstance(part, dict) and "class_path" in part for part in (model, network, data))


def stack(path):
    """The config files to give, in order, to run ``path``."""
    if _is_recipe(_load(path)):
        return [path]
    return [os.path.join(os.path.dirname(path), "at.yaml"), path]


def network_arguments(config):
    """Arguments that make the configured network small."""
    network = ((config.get("model") or {}).get("init_args") or {}).get("model") or {}
    return SMALL_NETWORK.get(str(network.get("class_path", "")).rsplit(".", 1)[-1], [])


def data_arguments(config, data_dir, tmp_path):
    """Arguments that point the configured data module at the fake data sets and shrink its splits."""
    data = config.get("data") or {}
    init_args = data.get("init_args") or {}
    prefix = "--data.init_args.base.init_args." if isinstance(init_args.get("base"), dict) else "--data.init_args."
    arguments = [prefix + "data_dir", data_dir, prefix + "held_out_size", "4", prefix + "eval_size", "4",
                 prefix + "train_eval_size", "4", prefix + "num_workers", "0"]
    if str(data.get("class_path", "")).endswith("PseudoLabeledDataModule"):
        base = getattr(lit_robust.data, init_args["base"]["class_path"].rsplit(".", 1)[-1])
        channels, height, width = base.image_shape
        rng = np.random.default_rng(0)
        path = tmp_path / "pseudo_labeled.npz"
        np.savez(path, images=rng.integers(0, 256, (20, height, width, channels), dtype=np.uint8),
                 labels=rng.integers(0, base.num_classes, 20))
        arguments += ["--data.init_args.pseudo_labeled_path", str(path)]
    return arguments


def teacher_arguments(files, config, data_dir, tmp_path):
    """Teacher checkpoints for KDSWA: the AT recipe's network at initialisation, saved as this library does."""
    if not str((config.get("model") or {}).get("class_path", "")).endswith("KDSWA"):
        return []
    teacher = parse(files[:1], data_dir, *network_arguments(config)).model
    path = str(tmp_path / "teacher.ckpt")
    torch.save({"state_dict": teacher.state_dict()}, path)
    return ["--model.init_args.robust_teacher", path, "--model.init_args.standard_teacher", path]


def standard_network_arguments(config):
    """HAT's standard network: an untrained copy of the (small) configured network, used as it is."""
    model = config.get("model") or {}
    if not str(model.get("class_path", "")).endswith("HAT"):
        return []
    network = (model.get("init_args") or {}).get("model") or {}
    small = [argument.replace("--model.init_args.model.", "--model.init_args.standard_model.")
             for argument in network_arguments(config)]
    return ["--model.init_args.standard_checkpoint", "null",
            "--model.init_args.standard_model", str(network["class_path"])] + small


def config_arguments(files):
    return [argument for path in files for argument in ("--config", path)]


def parse(files, data_dir, *extra):
    """Instantiate the model, data module and trainer of ``files`` without running anything."""
    return RobustCLI(AdversarialModule, AdversarialDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0, run=False,
                     args=config_arguments(files) + ["--data.init_args.data_dir", data_dir] + list(extra))


def optimization(module):
    """``(optimizer, scheduler, interval)`` as the trainer will see them, whether the module's own
    ``configure_optimizers`` or LightningCLI's (for the top-level optimizer / lr_scheduler) answers."""
    configured = module.configure_optimizers()
    if isinstance(configured, torch.optim.Optimizer):
        return configured, None, None
    if isinstance(configured, dict):
        scheduler = configured["lr_scheduler"]
        return configured["optimizer"], scheduler["scheduler"], scheduler.get("interval", "epoch")
    (optimizer,), (scheduler,) = configured
    return optimizer, scheduler, "epoch"


def cifar10(*names):
    return [os.path.join(ROOT, "configs", "cifar10", f"{name}.yaml") for name in names]


def test_configs_are_found():
    for directory in VISION:
        assert os.path.join(ROOT, "configs", directory, "at.yaml") in CONFIGS
    assert len(CONFIGS) > 40


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_runs(config, data_dir, tmp_path):
    files = stack(config)
    arguments = (["fit"] + config_arguments(files) + data_arguments(merged(files), data_dir, tmp_path) + FAST
                 + network_arguments(merged(files)) + teacher_arguments(files, merged(files), data_dir, tmp_path)
                 + standard_network_arguments(merged(files)))
    assert run_train(arguments, cwd=str(tmp_path)) == 0
    assert os.path.exists(tmp_path / "metrics.json")


def test_baseline_recipe_is_the_papers(data_dir):
    """configs/cifar10/at.yaml holds the setup of Stutz et al. 2021, supplement Sec. F, exactly."""
    cli = parse(cifar10("at"), data_dir)
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    assert type(module).__name__ == "PGDAT" and type(module.model).__name__ == "ResNet18"
    assert sum(p.numel() for p in module.model.parameters()) == 11_173_962
    assert isinstance(module.model.stem[2], torch.nn.ReLU)
    h = module.hparams
    assert math.isclose(h.epsilon, 8 / 255) and h.step_size == 0.007 and h.train_steps == 7 and h.norm == "linf"
    assert (h.val_steps, h.val_restarts, h.test_steps, h.test_restarts) == (7, 5, 20, 10)
    assert h.autoattack and h.autoattack_version == "standard" and h.test_on_train
    sgd, scheduler, interval = optimization(module)
    assert type(sgd) is torch.optim.SGD
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.05, 0.9, 0.005, False)
    assert type(scheduler) is torch.optim.lr_scheduler.MultiStepLR
    assert sorted(scheduler.milestones) == [60, 90, 120] and scheduler.gamma == 0.1
    assert interval == "epoch"
    assert trainer.max_epochs == 150 and trainer.logger.name == "cifar10_at"
    assert type(data).__name__ == "CIFAR10DataModule"
    assert (data.batch_size, data.held_out_size, data.eval_size, data.train_eval_size) == (128, 500, 1000, 1000)


def _lr_path(scheduler, steps):
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_cyclic_schedule_interpolates_per_iteration(data_dir):
    """0 -> 0.2 -> 0 linearly over 30 epochs of 391 iterations, stepped every iteration (Stutz et al. 2021,
    supplement Sec. G)."""
    cli = parse(cifar10("at", "cyclic_x2"), data_dir)
    assert cli.trainer.max_epochs == 60
    _, scheduler, interval = optimization(cli.model)
    assert interval == "step"
    cycle = 30 * 391
    rates = _lr_path(scheduler, cycle + 1)
    reference = [0.2 * (1 - abs(t / (cycle / 2) - 1)) for t in range(cycle + 1)]
    assert max(abs(a - b) for a, b in zip(rates, reference)) < 1e-9


@pytest.mark.parametrize("name, milestones, lr", [("late", [140, 145], 0.05), ("const_lr_0.01", None, 0.01)])
def test_schedules(name, milestones, lr, data_dir):
    optimizer, scheduler, _ = optimization(parse(cifar10("at", name), data_dir).model)
    assert optimizer.param_groups[0]["initial_lr" if scheduler else "lr"] == lr
    assert (scheduler is None) if milestones is None else sorted(scheduler.milestones) == milestones


def test_adam_and_nesterov(data_dir):
    adam = optimization(parse(cifar10("at", "adam"), data_dir).model)[0]
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 0.005
    sgd = optimization(parse(cifar10("at", "nesterov"), data_dir).model)[0]
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9


def test_activation_study_stack(data_dir):
    """Singla et al. 2021 on PreAct ResNet-18: Rice et al.'s setup, the network, the activation, in that order."""
    cli = parse(cifar10("at", "rice_setup", "preact", "act_pswish_2"), data_dir)
    network = cli.model.model
    assert type(network).__name__ == "PreActResNet18"
    activations = [m for m in network.modules() if type(m).__name__ == "PSwish"]
    assert len(activations) == 17 and all(m.beta == 2.0 for m in activations)
    assert not any(isinstance(m, torch.nn.ReLU) for m in network.modules())
    h = cli.model.hparams
    assert h.train_steps == 10 and math.isclose(h.step_size, 2 / 255)
    optimizer, scheduler, _ = optimization(cli.model)
    assert optimizer.param_groups[0]["weight_decay"] == 0.0005
    assert sorted(scheduler.milestones) == [100, 150]
    assert cli.trainer.max_epochs == 200


def test_leaky_relu_negative_slope(data_dir):
    network = parse(cifar10("at", "act_leaky_relu_neg0.2"), data_dir).model.model
    slopes = {m.negative_slope for m in network.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {-0.2}


def test_wide_resnet_configs(data_dir):
    assert sum(p.numel() for p in parse(cifar10("at", "wrn34_10"), data_dir).model.model.parameters()) == 46_160_474


def test_missing_data_set_fails_before_anything_is_written(tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = run_train(["fit", "--config", cifar10("at")[0], "--data.init_args.data_dir", str(empty)], cwd=str(run_dir))
    assert code == 2
    message = capsys.readouterr().err
    assert str(empty) in message and "data_batch_1" in message and "download true" in message
    assert os.listdir(run_dir) == []


def test_baseline_logs_val_rerr_every_epoch(data_dir, tmp_path):
    """The baseline starts from a data directory in the official format and logs val/rerr each epoch."""
    arguments = (["fit", "--config", cifar10("at")[0], "--data.init_args.data_dir", data_dir,
                  "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                  "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                  "--trainer.logger.class_path", "pytorch_lightning.loggers.CSVLogger",
                  "--data.init_args.batch_size", "8", "--data.init_args.held_out_size", "4",
                  "--data.init_args.eval_size", "4", "--data.init_args.train_eval_size", "4",
                  "--data.init_args.num_workers", "0", "--test_after_fit", "false"]
                 + SMALL_NETWORK["ResNet18"])
    assert run_train(arguments, cwd=str(tmp_path)) == 0
    (metrics,) = glob.glob(str(tmp_path / "logs" / "cifar10_at" / "version_0" / "metrics.csv"))
    with open(metrics) as f:
        header, *rows = [line.strip().split(",") for line in f]
    epochs = {row[header.index("epoch")] for row in rows if row[header.index("val/rerr")]}
    assert epochs == {"0", "1"}


def test_remedies_hold_the_official_settings(data_dir):
    """Consistency (lambda 1, T 0.5, AutoAugment + Cutout), SAM (rho 0.05), ASAM (rho 0.5, eta 0.01) and HAT
    (beta 2.5, gamma 0.5, h 2) as their papers' official code runs them on CIFAR-10."""
    consistency = parse(cifar10("at", "consistency"), data_dir)
    assert (consistency.model.hparams.lam, consistency.model.hparams.temperature) == (1.0, 0.5)
    steps = [type(step).__name__ for step in consistency.datamodule.train_transform.transforms]
    assert "AutoAugment" in steps and consistency.datamodule.train_transform.transforms[-1].size == 16  # Cutout
    sam, asam = parse(cifar10("at", "sam"), data_dir).model, parse(cifar10("at", "asam"), data_dir).model
    assert (sam.hparams.adaptive, sam.rho, sam.hparams.which) == (False, 0.05, "trainable")
    assert (asam.hparams.adaptive, asam.rho, asam.hparams.eta, asam.hparams.which) == (True, 0.5, 0.01, "trainable")
    hat = parse(cifar10("at", "hat"), data_dir).model.hparams
    assert (hat.beta, hat.gamma, hat.h) == (2.5, 0.5, 2.0) and hat.standard_checkpoint.endswith("last.ckpt")
