"""--ckpt_path and the settings given on the command line: test/validate use the settings given here and
only the checkpoint's weights; fit refuses a checkpoint of another module class or network; test refuses
to run on untrained weights unless told to."""

import os

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_train

AT = os.path.join(ROOT, "configs", "digits", "at.yaml")
TINY = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
        "--trainer.enable_progress_bar", "false", "--model.init_args.model.init_args.width", "4",
        "--model.init_args.train_steps", "1", "--model.init_args.val_steps", "1",
        "--model.init_args.test_steps", "1", "--model.init_args.test_restarts", "1",
        "--model.init_args.test_on_train", "false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint train.py wrote after one short epoch with epsilon 0.05."""
    directory = tmp_path_factory.mktemp("trained")
    assert run_train(["fit", "--config", AT, "--trainer.max_epochs", "1", "--model.init_args.epsilon", "0.05",
                      "--test_after_fit", "false"] + TINY, cwd=str(directory)) == 0
    checkpoints = directory / "logs" / "digits_at" / "version_0" / "checkpoints"
    return checkpoints / os.listdir(checkpoints)[0]


def test_test_uses_the_epsilon_given_not_the_checkpoints(trained, tmp_path, monkeypatch):
    from lit_robust.cli import RobustCLI

    assert torch.load(trained, weights_only=True)["hyper_parameters"]["epsilon"] == 0.05
    used = {}
    monkeypatch.setattr(RobustCLI, "after_test", lambda cli: used.update(epsilon=cli.model.test_attack.epsilon))
    assert run_train(["test", "--config", AT, "--ckpt_path", str(trained), "--model.init_args.epsilon", "0.4"]
                     + TINY, cwd=str(tmp_path)) == 0
    assert used["epsilon"] == 0.4
    run = tmp_path / "logs" / "digits_at" / "version_0"
    assert yaml.safe_load(open(run / "hparams.yaml"))["epsilon"] == 0.4
    assert yaml.safe_load(open(run / "config.yaml"))["model"]["init_args"]["epsilon"] == 0.4


def test_checkpoints_name_the_network_and_load_without_restating_it(trained):
    from lit_robust.modules import PGDAT

    assert torch.load(trained, weights_only=True)["hyper_parameters"]["model"]["init_args"]["width"] == 4
    module = PGDAT.load_from_checkpoint(trained)
    saved = torch.load(trained, weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[name]) for name, value in module.state_dict().items())


def refused(arguments, tmp_path, capsys, *names):
    code = run_train(arguments, cwd=str(tmp_path))
    err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(messages) == 1, err
    for name in names:
        assert name in messages[0], messages[0]
    assert not (tmp_path / "logs").exists()
    return messages[0]


def test_fit_refuses_a_checkpoint_of_another_module_class(trained, tmp_path, capsys):
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "lit_robust.modules.TRADES"
    checkpoint["hyper_parameters"]["lam"] = 6.0
    torch.save(checkpoint, tmp_path / "trades.ckpt")
    refused(["fit", "--config", AT, "--ckpt_path", str(tmp_path / "trades.ckpt")] + TINY, tmp_path, capsys,
            "ckpt_path", "TRADES", "PGDAT")


def test_fit_refuses_a_checkpoint_of_another_network(trained, tmp_path, capsys):
    refused(["fit", "--config", AT, "--ckpt_path", str(trained)] + TINY
            + ["--model.init_args.model.init_args.activation", "silu"], tmp_path, capsys, "ckpt_path", "silu")


def test_fit_warns_about_changed_settings_and_uses_them(trained, tmp_path):
    recipe = yaml.safe_load(open(AT))["model"]["init_args"]["epsilon"]
    with pytest.warns(UserWarning, match=rf"epsilon: 0.05 -> {recipe}"):
        assert run_train(["fit", "--config", AT, "--ckpt_path", str(trained), "--trainer.max_epochs", "2",
                          "--test_after_fit", "false"] + TINY, cwd=str(tmp_path)) == 0
    assert yaml.safe_load(open(tmp_path / "logs" / "digits_at" / "version_0" / "hparams.yaml"))["epsilon"] == recipe


@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_evaluating_untrained_weights_is_refused_unless_allowed(subcommand, tmp_path, capsys):
    refused([subcommand, "--config", AT] + TINY, tmp_path, capsys, "ckpt_path", "--allow_untrained")
    assert run_train([subcommand, "--config", AT, "--allow_untrained", "true"] + TINY, cwd=str(tmp_path)) == 0


def test_every_run_writes_last_ckpt_and_ckpt_path_last_resumes_that_run(tmp_path):
    common = ["fit", "--config", AT, "--test_after_fit", "false"] + TINY
    assert run_train(common + ["--trainer.max_epochs", "1"], cwd=str(tmp_path)) == 0
    run = tmp_path / "logs" / "digits_at" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert run_train(common + ["--trainer.max_epochs", "2", "--ckpt_path", "last"], cwd=str(tmp_path)) == 0
    assert os.listdir(tmp_path / "logs" / "digits_at") == ["version_0"]  # the same run, not a new empty one
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_predict_writes_the_checkpoints_predicted_labels(trained, tmp_path):
    from lit_robust.data import DigitsDataModule
    from lit_robust.modules import PGDAT

    assert run_train(["predict", "--config", AT, "--ckpt_path", str(trained),
                      "--model.init_args.predict_adversarial", "true"] + TINY, cwd=str(tmp_path)) == 0
    predictions = torch.load(tmp_path / "logs" / "digits_at" / "version_0" / "predictions.pt", weights_only=True)
    data = DigitsDataModule()
    data.setup("predict")
    x = torch.cat([batch[0] for batch in data.test_dataloader()])
    model = PGDAT.load_from_checkpoint(trained).model.eval()
    with torch.no_grad():
        assert torch.equal(predictions["labels"], model(x).argmax(dim=1))
    assert predictions["adversarial_labels"].shape == predictions["labels"].shape


def test_export_writes_weights_a_plain_network_loads(trained, tmp_path):
    from lit_robust.cli.export import main
    from lit_robust.models import SmallCNNFC

    main([str(trained), str(tmp_path / "net.pt")])
    network = SmallCNNFC(width=4)  # the AT recipe's network, at the width TINY gives
    network.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))  # strict: every key, no prefix
    saved = torch.load(trained, weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[f"model.{name}"]) for name, value in network.state_dict().items())


def test_export_gives_the_averaged_or_the_current_weights(tmp_path, capsys):
    """A checkpoint of a run with weight averaging holds the average in ``state_dict`` and the weights training
    had reached in ``current_model_state``: ``--weights`` picks one; without an average, ``current`` is refused."""
    from lit_robust.cli.export import main

    averaged, current = {"model.w": torch.ones(3), "model.b": torch.zeros(1)}, {"model.w": torch.full((3,), 2.0),
                                                                                  "model.b": torch.ones(1)}
    torch.save({"state_dict": averaged, "current_model_state": current}, tmp_path / "averaged.ckpt")
    main([str(tmp_path / "averaged.ckpt"), str(tmp_path / "saved.pt")])
    main([str(tmp_path / "averaged.ckpt"), str(tmp_path / "current.pt"), "--weights", "current"])
    assert torch.equal(torch.load(tmp_path / "saved.pt")["w"], torch.ones(3))
    assert torch.equal(torch.load(tmp_path / "current.pt")["w"], torch.full((3,), 2.0))
    torch.save({"state_dict": averaged}, tmp_path / "plain.ckpt")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "plain.ckpt"), str(tmp_path / "x.pt"), "--weights", "current"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: weights='current' is not allowed")
    assert not (tmp_path / "x.pt").exists()
