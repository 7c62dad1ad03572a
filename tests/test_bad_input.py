"""Wrong configurations through train.py: each ends with a non-zero exit status and one readable
``error:`` line naming the setting, no traceback, and nothing written or overwritten in the log
directory (which holds an earlier run)."""

import hashlib
import os

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from lit_robust.models import SmallCNN, SmallCNNFC
from lit_robust.modules import PGDAT
from tests.conftest import ROOT, run_train

AT = os.path.join(ROOT, "configs", "digits", "at.yaml")
AWP = os.path.join(ROOT, "configs", "digits", "awp.yaml")
UNLABELED = os.path.join(ROOT, "configs", "digits", "unlabeled_at.yaml")


def corrupt_cifar10(directory):
    """Every file of CIFAR-10's python version, each filled with bytes that are not the data set."""
    folder = directory / CIFAR10.base_folder
    folder.mkdir(parents=True)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], None)]:
        (folder / name).write_bytes(b"\x00not cifar\x00" * 100)
    return directory


def wrong_shape_pseudo_labels(directory):
    """Pseudo-labelled images of shape (N, 8, 8, 3) for grey-scale 8x8 digits."""
    path = directory / "pseudo.npz"
    np.savez(path, images=np.zeros((16, 8, 8, 3), np.uint8), labels=np.zeros(16, np.int64))
    return path


def other_model_checkpoint(directory):
    """A checkpoint of PGDAT with an 8-channel SmallCNN (the digits recipe has 32 channels)."""
    path = directory / "other.ckpt"
    torch.save({"state_dict": PGDAT(SmallCNN(width=8)).state_dict(), "pytorch-lightning_version": "2.6.0"}, path)
    return path


def trades_checkpoint(directory):
    """A checkpoint of TRADES with the digits recipe's network, as train.py writes it."""
    path = directory / "trades.ckpt"
    torch.save({"state_dict": PGDAT(SmallCNN()).state_dict(), "pytorch-lightning_version": "2.6.0",
                "hyper_parameters": {"_class_path": "lit_robust.modules.TRADES", "epsilon": 0.1, "lam": 6.0}}, path)
    return path


def a_file(directory):
    path = directory / "a_file"
    path.write_text("not a directory")
    return path


def not_a_checkpoint(directory):
    path = directory / "notes.ckpt"
    path.write_text("not a checkpoint")
    return path


def finished_checkpoint(directory, epochs=150, steps=1200):
    """A last.ckpt of the digits AT recipe's PGDAT as train.py writes it, after ``epochs`` epochs and ``steps``
    optimizer steps."""
    path = directory / "finished.ckpt"
    progress = {"ready": epochs, "completed": epochs - 1, "started": epochs, "processed": epochs}
    torch.save({"state_dict": PGDAT(SmallCNNFC()).state_dict(), "pytorch-lightning_version": "2.6.0",
                "epoch": epochs - 1, "global_step": steps,
                "loops": {"fit_loop": {"epoch_progress": {"total": progress, "current": progress}}},
                "hyper_parameters": {"_class_path": "lit_robust.modules.PGDAT"}}, path)
    return path


def not_yaml(directory):
    path = directory / "broken.yaml"
    path.write_text("trainer: [\n  max_epochs: 3\n")
    return path


CALLBACK = "--trainer.callbacks+=lit_robust.callbacks.{}"
NETWORK = "--model.init_args.model.init_args.{}"
# the digits AT recipe for two epochs of one batch, a short test
SHORT = ["--config", AT, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--model.init_args.test_steps", "1",
         "--model.init_args.test_restarts", "1", "--data.init_args.train_eval_size", "25"]
# (setting the message must name, arguments after "fit", a function making a file the arguments name)
TABLE = [
    ("epsilon", ["--config", AT, "--model.init_args.epsilon", "-0.1"], None),
    ("step_size", ["--config", AT, "--model.init_args.step_size", "0"], None),
    ("train_steps", ["--config", AT, "--model.init_args.train_steps", "0"], None),
    ("val_restarts", ["--config", AT, "--model.init_args.val_restarts", "0"], None),
    ("activation", ["--config", AT, "--model.init_args.model.init_args.activation", "swishy"], None),
    ("norm", ["--config", AT, "--model.init_args.norm", "l3"], None),
    ("model", ["--config", AT, "--model.class_path", "lit_robust.modules.NoSuchTraining"], None),
    ("data", ["--config", AT, "--data.class_path", "lit_robust.data.ImageNetDataModule"], None),
    ("data_dir", ["--config", AT, "--data.class_path", "lit_robust.data.CIFAR10DataModule",
                  "--data.init_args.data_dir", "{tmp}/nowhere"], None),
    ("data_dir", ["--config", AT, "--data.class_path", "lit_robust.data.CIFAR10DataModule",
                  "--data.init_args.data_dir", "{file}"], corrupt_cifar10),
    ("label_noise", ["--config", AT, "--model.init_args.label_noise", "1.5"], None),
    ("label_smoothing", ["--config", AT, "--model.init_args.label_smoothing", "-0.1"], None),
    ("decay", ["--config", AT, CALLBACK.format("WeightAveraging"), "--trainer.callbacks.decay", "1.0"],
     None),
    ("decay", ["--config", AT, CALLBACK.format("WeightAveraging"), "--trainer.callbacks.decay", "-0.5"],
     None),
    ("max_value", ["--config", AT, CALLBACK.format("WeightClipping"), "--trainer.callbacks.max_value", "0"],
     None),
    ("every_n_epochs", ["--config", AT, CALLBACK.format("RobustEarlyStopping"),
                        "--trainer.callbacks.every_n_epochs", "0"], None),
    ("patience", ["--config", AT, CALLBACK.format("RobustEarlyStopping"),
                  "--trainer.callbacks.patience", "0"], None),
    ("xi", ["--config", AWP, "--model.init_args.xi", "-0.01"], None),
    ("average_xi", ["--config", AT, CALLBACK.format("flatness_monitor.FlatnessMonitor"),
                    "--trainer.callbacks.average_xi", "-0.5"], None),
    ("pseudo_labeled_path", ["--config", AT, "--config", UNLABELED, "--data.init_args.pseudo_labeled_path", "{file}"],
     wrong_shape_pseudo_labels),
    ("ckpt_path", ["--config", AT, "--ckpt_path", "{file}"], other_model_checkpoint),
    ("ckpt_path", ["--config", AT, "--ckpt_path", "{file}"], not_a_checkpoint),
    ("ckpt_path", ["--config", AT, "--ckpt_path", "{tmp}/missing.ckpt"], None),
    ("held_out_size", ["--config", AT, "--data.init_args.held_out_size", "1700"], None),
    ("batch_size", ["--config", AT, "--data.init_args.batch_size", "0"], None),
    ("max_epochs", ["--config", AT, "--trainer.max_epochs", "many"], None),
    ("epsilonn", ["--config", AT, "--model.init_args.epsilonn", "0.1"], None),
    ("config", ["--config", "{tmp}/no_such_config.yaml"], None),
    # the threat model
    ("epsilon", ["--config", AT, "--model.init_args.epsilon", "1.5"], None),
    ("epsilon", ["--config", AT, "--model.init_args.epsilon", "nan"], None),
    ("epsilon", ["--config", AT, "--model.init_args.norm", "l2", "--model.init_args.epsilon", "-1"], None),
    ("train_epsilon", ["--config", AT, "--model.init_args.train_epsilon", "2.0"], None),
    ("train_epsilon", ["--config", AT, "--model.init_args.train_epsilon", "-0.1"], None),
    ("step_size", ["--config", AT, "--model.init_args.step_size", "0.5"], None),
    ("step_size", ["--config", AT, "--model.init_args.step_size", "-0.01"], None),
    ("l1_penalty", ["--config", AT, "--model.init_args.l1_penalty", "-1"], None),
    ("test_steps", ["--config", AT, "--model.init_args.test_steps", "0"], None),
    ("test_restarts", ["--config", AT, "--model.init_args.test_restarts", "0"], None),
    ("val_steps", ["--config", AT, "--model.init_args.val_steps", "-1"], None),
    ("activation_kwargs", ["--config", AT, "--model.init_args.model.init_args.activation", "leaky_relu",
                           "--model.init_args.model.init_args.activation_kwargs", "{{slpoe: 0.2}}"], None),
    ("epsilon", ["--config", AT, CALLBACK.format("RobustEarlyStopping"), "--trainer.callbacks.epsilon",
                 "1.5"], None),
    ("step_size", ["--config", AT, CALLBACK.format("RobustEarlyStopping"), "--trainer.callbacks.epsilon",
                   "0.1", "--trainer.callbacks.step_size", "0.5"], None),
    ("worst_xi", ["--config", AT, CALLBACK.format("flatness_monitor.FlatnessMonitor"),
                  "--trainer.callbacks.worst_xi", "0"], None),
    ("decay", ["--config", AT, CALLBACK.format("WeightAveraging"), "--trainer.callbacks.decay", "2"], None),
    # the optimiser and the schedule
    ("lr", ["--config", AT, "--optimizer.init_args.lr", "-0.1"], None),
    ("momentum", ["--config", AT, "--optimizer.init_args.momentum", "-1"], None),
    ("weight_decay", ["--config", AT, "--optimizer.init_args.weight_decay", "-0.5"], None),
    ("betas", ["--config", AT, "--optimizer", "torch.optim.Adam", "--optimizer.init_args.betas", "[2, 0.9]"], None),
    # the trainer
    ("max_epochs", ["--config", AT, "--trainer.max_epochs", "-5"], None),
    ("max_steps", ["--config", AT, "--trainer.max_steps", "-3"], None),
    ("min_epochs", ["--config", AT, "--trainer.min_epochs", "-1"], None),
    ("accelerator", ["--config", AT, "--trainer.accelerator", "tpu"], None),
    ("accelerator", ["--config", AT, "--trainer.accelerator", "quantum"], None),
    ("devices", ["--config", AT, "--trainer.devices", "0"], None),
    ("devices", ["--config", AT, "--trainer.devices", "-2"], None),
    ("devices", ["--config", AT, "--trainer.devices", "many"], None),
    ("num_nodes", ["--config", AT, "--trainer.num_nodes", "0"], None),
    ("accumulate_grad_batches", ["--config", AT, "--trainer.accumulate_grad_batches", "0"], None),
    ("check_val_every_n_epoch", ["--config", AT, "--trainer.check_val_every_n_epoch", "0"], None),
    ("log_every_n_steps", ["--config", AT, "--trainer.log_every_n_steps", "0"], None),
    ("val_check_interval", ["--config", AT, "--trainer.val_check_interval", "0"], None),
    ("val_check_interval", ["--config", AT, "--trainer.val_check_interval", "1.5"], None),
    ("limit_train_batches", ["--config", AT, "--trainer.limit_train_batches", "-1"], None),
    ("limit_val_batches", ["--config", AT, "--trainer.limit_val_batches", "1.5"], None),
    ("num_sanity_val_steps", ["--config", AT, "--trainer.num_sanity_val_steps", "-2"], None),
    ("gradient_clip_val", ["--config", AT, "--trainer.gradient_clip_val", "-1"], None),
    ("strategy", ["--config", AT, "--trainer.strategy", "nostrategy"], None),
    ("inference_mode", ["--config", AT, "--trainer.inference_mode", "true"], None),
    ("save_dir", ["--config", AT, "--trainer.logger.init_args.save_dir", "{file}"], a_file),
    ("save_dir", ["--config", AT, "--trainer.logger.init_args.save_dir", "{file}/logs"], a_file),
    ("default_root_dir", ["--config", AT, "--trainer.default_root_dir", "{file}/root"], a_file),
    # checkpoints and subcommands
    ("ckpt_path", ["--config", AT, "--ckpt_path", "{file}"], trades_checkpoint),
    ("ckpt_path", ["--config", AT, "--ckpt_path", "last"], None),
    ("ckpt_path", ["test", "--config", AT], None),
    ("ckpt_path", ["validate", "--config", AT], None),
    ("ckpt_path", ["test", "--config", AT, "--ckpt_path", "{file}"], other_model_checkpoint),
    # a fit that trains nothing (its test would report untrained weights as the run's result)
    ("trainer.max_epochs", ["--config", AT, "--trainer.max_epochs", "0"], None),
    ("trainer.max_steps", ["--config", AT, "--trainer.max_steps", "0"], None),
    ("trainer.limit_train_batches", ["--config", AT, "--trainer.limit_train_batches", "0"], None),
    ("trainer.limit_train_batches", ["--config", AT, "--trainer.limit_train_batches", "0.0"], None),
    ("trainer.max_epochs", ["--config", AT, "--ckpt_path", "{file}"], finished_checkpoint),
    ("trainer.max_steps", ["--config", AT, "--trainer.max_epochs", "200", "--trainer.max_steps", "1200",
                           "--ckpt_path", "{file}"],
     finished_checkpoint),
    # a callback that would never act in this run (SHORT: where it is not refused, the run is short)
    ("swa_start", SHORT + [CALLBACK.format("StochasticWeightAveraging"), "--trainer.callbacks.swa_start", "2"], None),
    ("swa_start", SHORT + [CALLBACK.format("StochasticWeightAveraging"), "--trainer.callbacks.swa_start", "5"], None),
    ("every_n_epochs", SHORT + [CALLBACK.format("RobustEarlyStopping"), "--trainer.callbacks.every_n_epochs", "3"],
     None),
    ("every_n_epochs", SHORT + ["--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "3",
                                CALLBACK.format("RobustEarlyStopping"), "--trainer.callbacks.every_n_epochs", "2"],
     None),
    ("trainer.limit_val_batches", SHORT + ["--trainer.limit_val_batches", "0"], None),
    ("trainer.check_val_every_n_epoch", SHORT + ["--trainer.check_val_every_n_epoch", "3"], None),
    ("every_n_epochs", SHORT + [CALLBACK.format("FlatnessMonitor"), "--trainer.callbacks.every_n_epochs", "3"], None),
    ("every_n_epochs", SHORT + [CALLBACK.format("LandscapeMonitor"), "--trainer.callbacks.every_n_epochs", "3"], None),
    ("every_n_epochs", SHORT + [CALLBACK.format("FlatnessMonitor"), "--trainer.callbacks.every_n_epochs", "0",
                                "--trainer.callbacks.on_test", "false"], None),
    # two callbacks that swap averaged weights in
    ("trainer.callbacks", SHORT + [CALLBACK.format("WeightAveraging"), CALLBACK.format("StochasticWeightAveraging"),
                                   "--trainer.callbacks.swa_start", "0"], None),
    ("trainer.callbacks", SHORT + [CALLBACK.format("WeightAveraging"), CALLBACK.format("WeightAveraging"),
                                   "--trainer.callbacks.decay", "0.9"], None),
    ("trainer.callbacks", SHORT + [CALLBACK.format("StochasticWeightAveraging"), "--trainer.callbacks.swa_start", "0",
                                   "--trainer.callbacks+=pytorch_lightning.callbacks.StochasticWeightAveraging",
                                   "--trainer.callbacks.swa_lrs", "0.01"], None),
    # the first batch's checks (the network against the data, the input range), after the logger was created
    ("model.mean", ["--config", AT, NETWORK.format("mean"), "[0.5, 0.5, 0.5]"], None),
    ("model.mean", ["--config", AT, NETWORK.format("mean"), "[0.2]"], None),
    ("model.std", ["--config", AT, NETWORK.format("std"), "[0.9]"], None),
    ("model.num_classes", ["--config", AT, NETWORK.format("num_classes"), "5"], None),
    ("model.in_channels", ["--config", AT, NETWORK.format("in_channels"), "3"], None),
    ("inputs", ["--config", AT, "--data", "tests.helpers.OutOfRangeDigits"], None),
    ("inputs", ["--config", AT, "--data", "tests.helpers.OutOfRangeDigits", "--data.init_args.scale", "-1"], None),
    # configuration files
    ("config", ["--config", "{file}"], not_yaml),
    ("config", ["--config", AT, "--config", "{tmp}"], None),
]
if not torch.cuda.is_available():
    TABLE.append(("accelerator", ["--config", AT, "--trainer.accelerator", "gpu"], None))


def log_directory_state(root):
    state = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                state[path] = (os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
        state[directory] = None
    return state


@pytest.mark.parametrize("setting, arguments, make", TABLE,
                         ids=[f"{i:02d}-{row[0]}" for i, row in enumerate(TABLE)])
def test_bad_input_is_one_message_and_nothing_written(tmp_path, capsys, setting, arguments, make):
    earlier_run = tmp_path / "logs" / "digits_at" / "version_0"
    earlier_run.mkdir(parents=True)
    (earlier_run / "config.yaml").write_text("an earlier run\n")
    (earlier_run / "metrics.json").write_text("{}\n")
    before = log_directory_state(tmp_path / "logs")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    file = make(inputs) if make else None
    arguments = [a.format(tmp=inputs, file=file) for a in arguments]

    if arguments[0].startswith("-"):
        arguments = ["fit"] + arguments
    code = run_train(arguments, cwd=str(tmp_path))

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    messages = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(messages) == 1, err
    assert setting in messages[0], messages[0]
    assert log_directory_state(tmp_path / "logs") == before
    assert sorted(os.listdir(tmp_path)) == ["inputs", "logs"]


def test_the_table_is_long():
    assert len(TABLE) + len(ENTRY_POINT_TABLE) >= 90


def a_directory(directory):
    path = directory / "a_directory"
    path.mkdir()
    return path


def study_of(text):
    def make(directory):
        path = directory / "study.yaml"
        path.write_text(text)
        return path
    return make


def run_with_metrics(text):
    def make(directory):
        run = directory / "run"
        run.mkdir()
        (run / "metrics.json").write_text(text)
        return run
    return make


def checkpoint_file(directory):
    path = directory / "run.ckpt"
    torch.save({"state_dict": PGDAT(SmallCNN(width=4)).state_dict()}, path)
    return path


def study_main(arguments):
    from lit_robust.study.runner import main
    main(arguments)


def report_main(arguments):
    from lit_robust.study.report import main
    main(arguments)


def export_main(arguments):
    from lit_robust.cli.export import main
    main(arguments)


# (entry point, setting the message must name, its arguments, a function making a file the arguments name)
ENTRY_POINT_TABLE = [
    (study_main, "study", ["{tmp}/missing.yaml", "--out", "{tmp}/out"], None),
    (study_main, "study", ["{file}", "--out", "{tmp}/out"], a_directory),
    (study_main, "study", ["{file}", "--out", "{tmp}/out"], study_of("runs: [\n  - name: a\n")),
    (study_main, "runs", ["{file}", "--out", "{tmp}/out"], study_of("- just\n- a list\n")),
    (study_main, "config", ["{file}", "--out", "{tmp}/out"],
     study_of("runs:\n  - name: a\n    configs: [nowhere.yaml]\n")),
    (study_main, "seeds", ["{file}", "--out", "{tmp}/out"],
     study_of(f"runs:\n  - name: a\n    configs: [{AT}]\n    seeds: [1, 1]\n")),
    (report_main, "metrics.json", ["{tmp}/no_run", "--out", "{tmp}/out"], None),
    (report_main, "run_dirs", ["{file}", "--out", "{tmp}/out"], not_a_checkpoint),
    (report_main, "run_dirs", ["{file}", "--out", "{tmp}/out"], run_with_metrics("{not json")),
    (report_main, "run_dirs", ["{file}", "--out", "{tmp}/out"], run_with_metrics("[1, 2]")),
    (report_main, "out", ["{file}", "--out", "{file}/metrics.json"], run_with_metrics('{"test/err": 0.5}')),
    (export_main, "ckpt_path", ["{tmp}/missing.ckpt", "{tmp}/out.pt"], None),
    (export_main, "ckpt_path", ["{file}", "{tmp}/out.pt"], a_directory),
    (export_main, "ckpt_path", ["{file}", "{tmp}/out.pt"], not_a_checkpoint),
    (export_main, "out", ["{file}", "{tmp}/nowhere/out.pt"], checkpoint_file),
    (export_main, "out", ["{file}", "{tmp}"], checkpoint_file),
]


@pytest.mark.parametrize("main, setting, arguments, make", ENTRY_POINT_TABLE,
                         ids=[f"{i:02d}-{row[0].__name__}-{row[1]}" for i, row in enumerate(ENTRY_POINT_TABLE)])
def test_entry_point_bad_file_is_one_message_and_nothing_written(tmp_path, capsys, main, setting, arguments, make):
    """``python -m lit_robust.study / report / export`` on a missing, unreadable or invalid file: exit status 2,
    one ``error:`` line naming the argument, no traceback, nothing written."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    file = make(inputs) if make else None
    before = log_directory_state(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=inputs, file=file) for a in arguments])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err, err
    messages = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(messages) == 1, err
    assert setting in messages[0], messages[0]
    assert log_directory_state(tmp_path) == before
