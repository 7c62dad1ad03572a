"""TemporalEnsembling (Dong et al. ICLR 2022): the ensemble update is the EMA of the clean predictions per example,
the weight follows the ramp-up, the loss on a fixed batch matches the equation, and a resumed run ends exactly like
an uninterrupted one, ensemble included."""

import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lit_robust.attacks import PGD
from lit_robust.callbacks import StochasticWeightAveraging
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import TemporalEnsembling
from lit_robust.modules.temporal_ensembling import TemporalEnsemblePGD

ATTACKS = dict(epsilon=0.1, step_size=0.05, train_steps=2, val_steps=1, val_restarts=1, test_steps=1,
               test_restarts=1, test_on_train=False)


def module(**kwargs):
    torch.manual_seed(0)
    settings = dict(ATTACKS, optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    settings.update(kwargs)
    return TemporalEnsembling(SmallCNN(width=4), **settings)


def trainer(tmp_path, max_epochs, callbacks=()):
    return Trainer(accelerator="cpu", max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=0,
                   logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                   default_root_dir=str(tmp_path), callbacks=list(callbacks),
                   enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))


def test_ramp_up_is_the_official_sigmoid_schedule():
    te = module(weight=300.0, start_epoch=89, end_epoch=149)
    # the official schedule, with its 1-based epochs e = t + 1 and start 90, end 150
    for t in (0, 88, 89, 100, 119, 148, 149, 150, 199):
        e = t + 1
        expected = 0.0 if e < 90 else 300.0 if e > 150 else 300.0 * math.exp(-5.0 * (1 - (e - 90) / 60) ** 2)
        assert te.ensemble_weight(t) == pytest.approx(expected)


class RecordEnsemble(Callback):
    """Before each step: the ensemble and the clean predictions in eval mode; after it: the ensemble."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, _, index = batch
        pl_module.model.eval()
        with torch.no_grad():
            probabilities = F.softmax(pl_module.model(x), dim=1)
        pl_module.model.train()
        self.steps.append({"index": index.clone(), "p": probabilities,
                           "before": pl_module.ensemble_predictions.clone()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1]["after"] = pl_module.ensemble_predictions.clone()


def test_ensemble_is_the_moving_average_of_clean_predictions(digits, tmp_path):
    record = RecordEnsemble()
    te = module(momentum=0.7, start_epoch=0, end_epoch=2)
    trainer(tmp_path, 1, [record]).fit(te, datamodule=digits)
    assert len(record.steps) == 3
    for step in record.steps:
        index, before, after = step["index"], step["before"], step["after"]
        assert torch.allclose(after[index], 0.7 * before[index] + 0.3 * step["p"], atol=1e-6)
        others = torch.ones(len(before), dtype=torch.bool)
        others[index] = False
        assert torch.equal(after[others], before[others])
    assert len(te.ensemble_predictions) == len(digits.train_set)


def test_loss_on_a_fixed_batch_is_the_te_objective():
    te = module(start_epoch=0, end_epoch=4)
    te.log_dict = te.log = lambda *a, **k: None
    torch.manual_seed(1)
    x, y, index = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,)), torch.tensor([0, 3, 5, 7, 8, 9])
    te.ensemble_predictions = torch.rand(10, 10)
    previous = te.ensemble_predictions.clone()
    seen = {}
    attack = te.train_attack.run
    te.train_attack.run = lambda *a, **k: seen.setdefault("result", attack(*a, **k))
    te.train()
    loss = te.training_step((x, y, index), 0)["loss"]
    te.model.eval()
    with torch.no_grad():
        p_bar = 0.9 * previous[index] + 0.1 * F.softmax(te.model(x), dim=1)
        p_tilde = p_bar / p_bar.sum(dim=1, keepdim=True)
    te.model.train()
    weight = 300.0 * math.exp(-5.0)  # first epoch of the ramp-up
    with torch.no_grad():
        logits = te.model(seen["result"].x_adv)
    expected = F.cross_entropy(logits, y) + weight * ((F.softmax(logits, dim=1) - p_tilde) ** 2).mean()
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


def test_attack_maximises_the_training_objective():
    attack = TemporalEnsemblePGD(0.1, 0.05, 1)
    logits, y, targets = torch.randn(4, 10), torch.randint(0, 10, (4,)), torch.softmax(torch.randn(4, 10), dim=1)
    assert torch.equal(attack.objective(logits, y, None), PGD(0.1, 0.05, 1).objective(logits, y, None))
    attack.ensemble = (targets, 5.0)
    expected = F.cross_entropy(logits, y, reduction="none") + 5.0 * ((logits.softmax(1) - targets) ** 2).sum(1) / 10
    assert torch.allclose(attack.objective(logits, y, None), expected, atol=1e-6)


def test_resume_is_exact_ensemble_included(digits, tmp_path):
    def fit(directory, max_epochs, ckpt_path=None):
        te = module(start_epoch=0, end_epoch=3)
        checkpoint = ModelCheckpoint(dirpath=str(directory), save_last=True)
        trainer(directory, max_epochs, [checkpoint]).fit(te, datamodule=digits, ckpt_path=ckpt_path)
        return te

    uninterrupted = fit(tmp_path / "a", 2)
    first = fit(tmp_path / "b", 1)
    assert "temporal_ensemble" in torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert first.ensemble_predictions.abs().sum() > 0
    resumed = fit(tmp_path / "b", 2, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert torch.allclose(resumed.ensemble_predictions, uninterrupted.ensemble_predictions, atol=1e-6)
    for p, q in zip(resumed.parameters(), uninterrupted.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_batches_without_indices_are_refused():
    with pytest.raises(RuntimeError, match="index"):
        module().training_step((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])), 0)


@pytest.mark.parametrize("kwargs, setting", [
    (dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum"), (dict(weight=-1.0), "weight"),
    (dict(start_epoch=-1), "start_epoch"), (dict(start_epoch=5, end_epoch=5), "end_epoch"),
])
def test_bad_settings_are_refused(kwargs, setting):
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        TemporalEnsembling(SmallCNN(width=4), **kwargs)


class SaveEnsemblePerRank(Callback):
    """Writes this process's ensemble, the indices it trained on, and its final state (weights and batch
    normalisation's statistics) to ``rank<r>.pt``."""

    def __init__(self, directory):
        self.directory = directory
        self.indices = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.append(batch[2].clone())

    def on_train_end(self, trainer, pl_module):
        torch.save({"ensemble": pl_module.ensemble_predictions.cpu(), "indices": torch.cat(self.indices),
                    "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()}},
                   os.path.join(self.directory, f"rank{trainer.global_rank}.pt"))


def test_two_process_ddp_holds_one_ensemble_and_one_swa_average(digits, tmp_path):
    te = module(start_epoch=0, end_epoch=1)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=2,
                      limit_val_batches=0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp_path),
                      callbacks=[StochasticWeightAveraging(swa_start=0), SaveEnsemblePerRank(str(tmp_path))])
    trainer.fit(te, datamodule=digits)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0["ensemble"], rank1["ensemble"])
    updated = set(torch.nonzero(rank0["ensemble"].sum(dim=1)).flatten().tolist())
    assert updated == set(rank0["indices"].tolist()) | set(rank1["indices"].tolist())
    assert not set(rank0["indices"].tolist()) >= set(rank1["indices"].tolist())  # the ranks saw different examples
    differ = [k for k in rank0["weights"] if not torch.equal(rank0["weights"][k], rank1["weights"][k])]
    assert not differ, differ  # the SWA weights and their recomputed batch-normalisation statistics
