"""HAT (Rade and Moosavi-Dezfooli 2022): the loss on a fixed batch against the paper's formula, and a standard
network that is loaded from a checkpoint of this library, frozen and kept out of the module."""

import copy
import os

import numpy as np
import pytest
import torch
from pytorch_lightning import Trainer

from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import HAT, StandardTraining
from tests.helpers import step_and_attack

BETA, GAMMA, H = 3.0, 0.7, 2.0


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def reference_loss(clean, adversarial, helper, y, y_helper):
    """CE(f(x), y) + beta * KL(f(x) || f(x_adv)) + gamma * CE(f(x + h r), y_helper), batch means, float64."""
    clean, adversarial, helper = (t.double().numpy() for t in (clean, adversarial, helper))
    rows = np.arange(len(y))
    log_p, log_q = log_softmax(clean), log_softmax(adversarial)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean()
    return (-log_p[rows, y.numpy()].mean() + BETA * kl - GAMMA * log_softmax(helper)[rows, y_helper.numpy()].mean())


def fit(module, datamodule, root, steps=2):
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, inference_mode=False,
                      limit_val_batches=0, default_root_dir=str(root))
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_loss_on_a_fixed_batch_equals_the_papers_objective(digits):
    torch.manual_seed(0)
    standard = SmallCNN(width=8)
    module = HAT(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=3, beta=BETA, gamma=GAMMA, h=H,
                 standard_model=standard)
    x, y = next(iter(digits.train_dataloader()))
    before = copy.deepcopy(module.model).train()
    loss, result = step_and_attack(module, (x, y))
    x_adv = result.x_adv
    with torch.no_grad():
        y_helper = standard.eval()(x_adv).argmax(dim=1)  # the standard network's label of the adversarial example
        clean, adversarial, helper = before(x), before(x_adv), before(x + H * (x_adv - x))
    assert loss.item() == pytest.approx(reference_loss(clean, adversarial, helper, y, y_helper), rel=1e-5)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_standard_network_from_a_checkpoint_is_frozen_and_kept_out(digits, tmp_path):
    torch.manual_seed(0)
    standard_run = StandardTraining(SmallCNN(width=4), epsilon=0.1, step_size=0.025)
    trainer = fit(standard_run, digits, tmp_path / "standard")
    path = str(tmp_path / "standard.ckpt")
    trainer.save_checkpoint(path)

    module = HAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=2, standard_checkpoint=path)
    fit(module, digits, tmp_path / "hat", steps=3)
    standard = module.standard_network().network
    for (name, p), q in zip(standard.state_dict().items(), standard_run.model.state_dict().values()):
        assert torch.equal(p, q.cpu()), name  # loaded, and unchanged by three training steps
    assert not standard.training and not any(p.requires_grad for p in standard.parameters())
    assert all(id(p) not in {id(q) for q in module.parameters()} for p in standard.parameters())
    assert set(module.state_dict()) == {"model." + n for n in module.model.state_dict()}  # nothing of f_std
    assert "standard_model" not in module.hparams and module.hparams.standard_checkpoint == path
    assert not torch.equal(module.model.classifier.weight, standard.classifier.weight)


def test_bad_standard_checkpoints_fail_before_training(digits, tmp_path):
    missing = HAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, standard_checkpoint=str(tmp_path / "none.ckpt"))
    with pytest.raises(ConfigurationError, match="^standard_checkpoint="):
        fit(missing, digits, tmp_path)
    path = str(tmp_path / "wide.pt")
    torch.save(SmallCNN(width=8).state_dict(), path)
    mismatched = HAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, standard_checkpoint=path)
    with pytest.raises(ConfigurationError, match="^standard_checkpoint=.*does not fit"):
        fit(mismatched, digits, tmp_path)
    fitting = HAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, standard_checkpoint=path,
                  standard_model=SmallCNN(width=8))  # the architecture given: a plain state dict loads
    assert isinstance(fitting.standard_network().network, SmallCNN)


def test_the_documented_workflow_runs(tmp_path):
    """configs/digits/hat.yaml's header: a standard run with a last.ckpt, then AT + HAT reading it."""
    from tests.conftest import ROOT, run_train

    digits = os.path.join(ROOT, "configs", "digits")
    short = ["--trainer.enable_progress_bar", "false", "--model.init_args.model.init_args.width", "4"]
    assert run_train(["fit", "--config", os.path.join(digits, "at.yaml"),
                      "--config", os.path.join(digits, "standard.yaml"),
                      "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
                      "--trainer.callbacks.save_last=true", "--trainer.max_epochs", "1",
                      "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0",
                      "--test_after_fit", "false"] + short, cwd=str(tmp_path)) == 0
    assert run_train(["fit", "--config", os.path.join(digits, "at.yaml"), "--config", os.path.join(digits, "hat.yaml"),
                      "--trainer.fast_dev_run", "1", "--model.init_args.train_steps", "2",
                      "--model.init_args.test_steps", "2", "--model.init_args.test_restarts", "1"] + short,
                     cwd=str(tmp_path)) == 0
