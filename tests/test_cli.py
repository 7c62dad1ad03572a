"""train.py end to end: TensorBoard events with val/rerr per epoch, test of a checkpoint, metrics.json."""

import glob
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, run_train
from tests.tensorboard_tabs import hparams_rows

CONFIG = os.path.join(ROOT, "configs", "digits", "at.yaml")
SHORT = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
         "--model.init_args.test_steps", "2", "--model.init_args.test_restarts", "1"]


def scalars(log_dir):
    events = EventAccumulator(log_dir)
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_logs_val_rerr_per_epoch_and_tests(tmp_path):
    assert run_train(["fit", "--config", CONFIG] + SHORT, cwd=str(tmp_path)) == 0
    log_dir = tmp_path / "logs" / "digits_at" / "version_0"
    values = scalars(str(log_dir))
    assert len(values["val/rerr"]) == 2
    assert all(0 <= v <= 1 for v in values["val/rerr"])
    assert len(values["train/loss"]) == 2 and len(values["train/rerr"]) == 2  # the README's names, once per epoch
    assert "test/rerr_pgd" in values and not [tag for tag in values if tag.startswith("train_step/")]
    assert "lr-SGD" in values  # the learning rate
    metrics = json.load(open(log_dir / "metrics.json"))
    for name in ("test/err", "test/loss", "test/rerr_pgd", "test/rloss_pgd", "test/rerr_pgd_train"):
        assert name in metrics
    assert metrics["test/rerr_pgd"] >= metrics["test/err"]

    checkpoint = glob.glob(str(log_dir / "checkpoints" / "*.ckpt"))[0]
    assert run_train(["test", "--config", CONFIG, "--ckpt_path", checkpoint] + SHORT[-6:], cwd=str(tmp_path)) == 0
    tested = json.load(open(tmp_path / "logs" / "digits_at" / "version_1" / "metrics.json"))
    assert metrics["ckpt_path"] is None and tested["ckpt_path"] == checkpoint
    assert tested["test/err"] == pytest.approx(metrics["test/err"])  # same weights, same clean error
    rows = hparams_rows(tmp_path / "logs" / "digits_at")  # TensorBoard's HPARAMS tab: a row per run
    assert rows["version_1"]["hparams"]["ckpt_path"] == checkpoint
    assert rows["version_1"]["metrics"]["test/rerr_pgd"] == pytest.approx(tested["test/rerr_pgd"])


def test_bad_setting_is_one_message_and_nothing_written(tmp_path, capsys):
    code = run_train(["fit", "--config", CONFIG, "--model.init_args.epsilon", "-0.1"], cwd=str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert "epsilon=-0.1 is not allowed" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()


def test_top_level_scheduler_steps_at_the_modules_interval(tmp_path):
    from lit_robust.cli import RobustCLI

    args = ["--config", CONFIG, "--model.init_args.lr_scheduler_interval", "step",
            "--lr_scheduler.class_path", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.init_args.step_size", "1",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "0",
            "--test_after_fit", "false", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--model.init_args.train_steps", "1"]
    cli = RobustCLI(args=args, run=False, subclass_mode_model=True, subclass_mode_data=True,
                    trainer_defaults={"inference_mode": False})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.05 * 0.1 ** 3)  # stepped after each of the 3 batches, not once per epoch
