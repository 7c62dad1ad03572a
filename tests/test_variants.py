"""Every AT variant of this file's list: its pass count, training on digits, bad settings, DDP.

The pass counts are the ones the variants' docstrings state; they fail if a variant does a forward
or backward pass beyond its algorithm.
"""

import pytest
import torch
from pytorch_lightning import Trainer

from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import (
    AMP,
    AWP,
    HAT,
    KDSWA,
    MART,
    PGDAT,
    SAM,
    TRADES,
    Consistency,
    FastAT,
    StandardTraining,
    TemporalEnsembling,
)
from tests.helpers import (
    SMALL_ATTACKS,
    VARIANTS,
    SaveWeightsPerRank,
    count_passes,
    fit_and_test,
    small_network,
    teachers,
)

TEACHERS = teachers()


# forward passes, input-only backward passes, full backward passes of one PGD-7 step: one row per variant
PASSES = [
    (PGDAT, {}, (8, 7, 1)),
    (TRADES, {}, (10, 7, 1)),  # + the attack's clean target, + clean pass of the update
    (MART, {}, (9, 7, 1)),  # + clean pass of the update
    (AWP, {}, (9, 7, 2)),  # + ascent pass at w
    (AWP, dict(base_loss="trades"), (12, 7, 2)),
    (AMP, {}, (9, 7, 2)),  # N = 1: N (K + 1) + 1
    (AMP, dict(inner_iterations=2), (17, 14, 3)),
    (FastAT, {}, (2, 1, 1)),
    (StandardTraining, {}, (1, 0, 1)),
    (KDSWA, TEACHERS, (8, 7, 1)),  # + one forward pass of each teacher, not counted (not the student)
    (TemporalEnsembling, {}, (8, 7, 1)),  # before start_epoch: PGD-AT
    (TemporalEnsembling, dict(start_epoch=0), (9, 7, 1)),  # + the clean prediction for the ensemble
    (Consistency, {}, (8, 7, 1)),  # as PGD-AT, on both views (2B examples) at once
    (SAM, {}, (9, 7, 2)),  # + ascent pass at w, as AWP
    (SAM, dict(adaptive=True), (9, 7, 2)),
    (HAT, dict(standard_model=SmallCNN(width=8)), (11, 7, 1)),  # TRADES' + helper pass (+ 1 of the standard network)
]
# variants whose pass counts need more than one batch (EntropySGD: a fit) or a data module of their own
COUNTED_IN_THEIR_OWN_FILE = {"EntropySGD", "FriendlyAT", "UnlabeledAT", "RotationSelfSupervised"}


def test_every_variant_has_its_pass_count():
    counted = {cls.__name__ for cls, _, _ in PASSES} | COUNTED_IN_THEIR_OWN_FILE
    assert counted == {cls.__name__ for cls in VARIANTS}


@pytest.mark.parametrize("cls, kwargs, expected", PASSES, ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_passes_per_step_with_pgd7(cls, kwargs, expected, digits):
    torch.manual_seed(0)
    module = cls(SmallCNN(width=8), train_steps=7, **SMALL_ATTACKS, **kwargs)
    batch = next(iter(digits.train_dataloader()))
    if cls is TemporalEnsembling:  # a buffer per training example: the batch's indices, the ensemble started
        batch = (*batch, torch.arange(len(batch[1])))
        module.ensemble_predictions = torch.zeros(len(digits.train_set), digits.num_classes)
    digits.train_views = getattr(cls, "train_views", 1)
    if digits.train_views > 1:
        batch = next(iter(digits.train_dataloader()))
    assert count_passes(module, batch) == expected


@pytest.mark.parametrize("cls", [TRADES, MART, AWP, AMP, FastAT, SAM], ids=lambda c: c.__name__)
def test_trains_robust_on_digits(cls, digits, tmp_path):
    torch.manual_seed(0)
    module = cls(small_network(), train_steps=3, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **SMALL_ATTACKS)
    result = fit_and_test(module, digits, tmp_path)
    assert result["test/rerr_pgd"] < 0.6, result  # chance is 0.9


def test_standard_training_is_accurate_but_not_robust(digits, tmp_path):
    torch.manual_seed(0)
    module = StandardTraining(small_network(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **SMALL_ATTACKS)
    result = fit_and_test(module, digits, tmp_path)
    assert result["test/err"] < 0.2, result
    assert result["test/rerr_pgd"] > result["test/err"] + 0.2, result


@pytest.mark.parametrize("cls, kwargs, setting", [
    (TRADES, dict(lam=-1.0), "lam"), (MART, dict(lam=-1.0), "lam"),
    (AWP, dict(xi=0.0), "xi"), (AWP, dict(lam=-1.0), "lam"), (AWP, dict(which="biases"), "which"),
    (AWP, dict(base_loss="pgd"), "base_loss"),
    (AMP, dict(delta=-0.1), "delta"), (AMP, dict(xi=0.0), "xi"), (AMP, dict(inner_iterations=0), "inner_iterations"),
    (AMP, dict(base_loss="awp"), "base_loss"), (FastAT, dict(step_factor=0.0), "step_factor"),
    (FastAT, dict(norm="l2"), "norm"),
    (KDSWA, dict(robust_teacher="missing.ckpt"), "robust_teacher"),
    (KDSWA, dict(TEACHERS, temperature=0.0), "temperature"),
    (KDSWA, dict(TEACHERS, robust_weight=0.95), "standard_weight"),
    (TemporalEnsembling, dict(momentum=1.0), "momentum"), (TemporalEnsembling, dict(weight=-1.0), "weight"),
    (TemporalEnsembling, dict(start_epoch=10, end_epoch=10), "end_epoch"),
    (Consistency, dict(lam=-1.0), "lam"), (Consistency, dict(temperature=0.0), "temperature"),
    (SAM, dict(rho=0.0), "rho"), (SAM, dict(eta=-0.01), "eta"), (SAM, dict(which="biases"), "which"),
    (SAM, dict(adaptive="yes"), "adaptive"), (SAM, dict(base_loss="awp"), "base_loss"),
    (HAT, dict(beta=-1.0, standard_model=SmallCNN(width=4)), "beta"),
    (HAT, dict(gamma=-0.5, standard_model=SmallCNN(width=4)), "gamma"),
    (HAT, dict(h=1.0, standard_model=SmallCNN(width=4)), "h"), (HAT, {}, "standard_checkpoint"),
    (HAT, dict(standard_model="resnet18"), "standard_model"),
])
def test_bad_settings_fail_at_construction(cls, kwargs, setting):
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        cls(SmallCNN(width=8), **kwargs)


@pytest.mark.parametrize("cls", [AWP, AMP], ids=lambda c: c.__name__)
def test_two_process_ddp_keeps_weights_identical(cls, digits, tmp_path):
    torch.manual_seed(0)
    module = cls(SmallCNN(width=4), train_steps=2, **SMALL_ATTACKS)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=3,
                      limit_val_batches=0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp_path),
                      callbacks=[SaveWeightsPerRank(str(tmp_path))])
    initial = torch.cat([p.detach().flatten() for p in module.parameters()])
    trainer.fit(module, datamodule=digits)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0, rank1)
    assert not torch.equal(rank0, initial)  # it trained
