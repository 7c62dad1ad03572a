"""Faults a run must not hide: the class a checkpoint names, a fit that trains nothing, a callback that never
acts, two weight averages at once, and a refused run's log directories left as they were."""

import json
import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.callbacks import RobustEarlyStopping, StochasticWeightAveraging, WeightAveraging
from lit_robust.cli.run_directory import restore, snapshot
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT, TRADES, AdversarialModule
from tests.conftest import ROOT, run_train
from tests.helpers import SMALL_ATTACKS, tiny_trainer

AT = os.path.join(ROOT, "configs", "digits", "at.yaml")


def tiny_data():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8, generator=generator), torch.randint(0, 10, (32,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def python_checkpoint(tmp_path):
    """A checkpoint of a PGDAT trained one step from Python (no LightningCLI)."""
    torch.manual_seed(0)
    module = PGDAT(SmallCNN(width=4), train_steps=1, **SMALL_ATTACKS)
    trainer = tiny_trainer([], max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=tiny_data())
    path = str(tmp_path / "pgdat.ckpt")
    trainer.save_checkpoint(path)
    return path, module


def cli_checkpoint(tmp_path):
    """A checkpoint as train.py writes it: the hyper-parameters name the class and the network."""
    torch.manual_seed(0)
    module = PGDAT(SmallCNN(width=4), **SMALL_ATTACKS)
    hyper_parameters = dict(module.hparams, _class_path="lit_robust.modules.PGDAT",
                            _instantiator="pytorch_lightning.cli.instantiate_module",
                            model={"class_path": "lit_robust.models.SmallCNN", "init_args": {"width": 4}})
    path = str(tmp_path / "cli.ckpt")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hyper_parameters,
                "pytorch-lightning_version": "2.6.0"}, path)
    return path, module


@pytest.mark.parametrize("make", [python_checkpoint, cli_checkpoint], ids=["python", "cli"])
def test_load_from_checkpoint_builds_the_class_the_checkpoint_names(tmp_path, make):
    path, saved = make(tmp_path)
    loaded = AdversarialModule.load_from_checkpoint(path, model=SmallCNN(width=4))
    assert type(loaded) is PGDAT  # with its training step, not a bare AdversarialModule
    assert loaded.training_step.__func__ is PGDAT.training_step
    for name, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.hparams.epsilon == SMALL_ATTACKS["epsilon"]
    assert type(PGDAT.load_from_checkpoint(path, model=SmallCNN(width=4))) is PGDAT


@pytest.mark.parametrize("make", [python_checkpoint, cli_checkpoint], ids=["python", "cli"])
def test_load_from_checkpoint_of_another_class_is_refused(tmp_path, make):
    path, _ = make(tmp_path)
    with pytest.raises(ConfigurationError) as error:
        TRADES.load_from_checkpoint(path, model=SmallCNN(width=4))
    message = str(error.value)
    assert "\n" not in message and message.startswith("checkpoint_path=")
    assert "TRADES" in message and "PGDAT" in message


def test_load_from_checkpoint_naming_no_class_needs_the_variant(tmp_path):
    path = str(tmp_path / "plain.ckpt")
    module = PGDAT(SmallCNN(width=4), **SMALL_ATTACKS)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)
    with pytest.raises(ConfigurationError, match="^checkpoint_path=.*PGDAT.load_from_checkpoint"):
        AdversarialModule.load_from_checkpoint(path, model=SmallCNN(width=4))
    assert type(PGDAT.load_from_checkpoint(path, model=SmallCNN(width=4))) is PGDAT


FAST = ["--model.init_args.train_steps", "1", "--model.init_args.val_steps", "1", "--model.init_args.val_restarts",
        "1", "--model.init_args.test_steps", "1", "--model.init_args.test_restarts", "1", "--data.init_args.train_size",
        "50", "--data.init_args.train_eval_size", "16", "--data.init_args.held_out_size", "16",
        "--data.init_args.eval_size", "16", "--trainer.enable_progress_bar", "false"]


def test_a_fit_that_trains_nothing_runs_only_on_purpose(tmp_path, capsys):
    """max_epochs=0 is refused (bad-input table); --allow_untrained true tests the untrained weights on purpose."""
    assert run_train(["fit", "--config", AT, "--trainer.max_epochs", "0"] + FAST, cwd=str(tmp_path)) == 2
    assert "trainer.max_epochs=0" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
    code = run_train(["fit", "--config", AT, "--trainer.max_epochs", "0", "--allow_untrained", "true"] + FAST,
                     cwd=str(tmp_path))
    assert code == 0
    with open(tmp_path / "logs" / "digits_at" / "version_0" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["global_step"] == 0 and "test/rerr_pgd" in metrics


def test_a_callback_that_never_acts_is_warned_about_in_a_trainer_built_by_hand(tmp_path):
    """Outside train.py (no test reported as the run's result) a first part of a run may stop before SWA starts:
    a warning, and the run goes on."""
    swa = StochasticWeightAveraging(swa_start=5)
    trainer = tiny_trainer([swa], max_epochs=2, limit_val_batches=0)
    with pytest.warns(UserWarning, match="swa_start=5: swa_start must be reached within trainer.max_epochs=2"):
        trainer.fit(PGDAT(SmallCNN(width=4), train_steps=1, **SMALL_ATTACKS), train_dataloaders=tiny_data())
    assert swa.num_averaged == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StochasticWeightAveraging(swa_start=1).check_schedule(tiny_trainer([], max_epochs=2))
        RobustEarlyStopping(every_n_epochs=2).check_schedule(tiny_trainer([], max_epochs=2))
    with pytest.raises(ConfigurationError, match="^every_n_epochs=4 .* after epoch 12"):
        RobustEarlyStopping(every_n_epochs=4).check_schedule(tiny_trainer([], max_epochs=5, check_val_every_n_epoch=3))


def test_two_weight_averages_are_refused_at_setup():
    trainer = tiny_trainer([WeightAveraging(), StochasticWeightAveraging(swa_start=0)], max_epochs=1)
    with pytest.raises(ConfigurationError, match=r"^trainer.callbacks=\['WeightAveraging', "
                                                 r"'StochasticWeightAveraging'\] is not allowed"):
        trainer.fit(PGDAT(SmallCNN(width=4), train_steps=1, **SMALL_ATTACKS), train_dataloaders=tiny_data())


def test_a_refused_run_leaves_its_directories_as_they_were(tmp_path):
    run = tmp_path / "logs" / "run" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("the earlier run\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    new = tmp_path / "fresh" / "name" / "version_0"
    before = snapshot([str(run), str(new)])
    (run / "config.yaml").write_text("the refused run\n")
    (run / "events.out.tfevents.1").write_bytes(b"event")
    (run / "hparams").mkdir()
    (run / "hparams" / "x.yaml").write_text("x")
    new.mkdir(parents=True)
    (new / "events.out.tfevents.2").write_bytes(b"event")
    restore(before)
    assert (run / "config.yaml").read_text() == "the earlier run\n"
    assert sorted(os.listdir(run)) == ["checkpoints", "config.yaml"]
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    assert not (tmp_path / "fresh").exists()


def test_a_first_part_of_a_run_may_stop_before_swa_starts(tmp_path):
    """train.py refuses swa_start beyond max_epochs when it tests after fit (bad-input table); without the test
    (a first part, resumed later with more epochs) it warns and trains."""
    arguments = ["fit", "--config", AT, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                 "--trainer.limit_val_batches", "1",
                 "--trainer.callbacks+=lit_robust.callbacks.StochasticWeightAveraging",
                 "--trainer.callbacks.swa_start", "3", "--test_after_fit", "false"] + FAST
    with pytest.warns(UserWarning, match="swa_start=3: .* It acts only if this run is resumed"):
        assert run_train(arguments, cwd=str(tmp_path)) == 0
    run = tmp_path / "logs" / "digits_at" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "metrics.json").exists()
