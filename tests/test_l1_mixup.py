"""Yan et al. 2022, Table 4 inside PGD-AT: the L1 penalty on the weights and mixup."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Trainer

from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT


def _module(**kwargs):
    torch.manual_seed(0)
    return PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=2, **kwargs)


def test_negative_l1_penalty_is_refused():
    with pytest.raises(ConfigurationError, match="l1_penalty"):
        _module(l1_penalty=-1.0)


def test_mixup_mixes_images_and_labels_with_one_lambda():
    """x_mix = lambda x + (1 - lambda) x[pi], target = lambda e_y + (1 - lambda) e_y[pi] (Zhang et al.);
    without a trainer or data module, the number of classes is the network's."""
    module = _module(mixup_alpha=1.4)
    y = torch.arange(8)
    x = (y.float() / 20).view(-1, 1, 1, 1).expand(8, 1, 8, 8).contiguous()
    lambdas = set()
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, target, major = module.mixup(x, y)
        assert torch.allclose(target.sum(dim=1), torch.ones(8))
        for i in range(8):
            weights = {int(k): float(target[i, k]) for k in target[i].nonzero().flatten()}
            lam = weights[i] if len(weights) == 2 else 1.0
            partner = next((k for k in weights if k != i), i)
            assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[partner])
            assert int(major[i]) == (i if lam >= 0.5 else partner)
            if len(weights) == 2:
                lambdas.add(round(lam, 6))
    assert len(lambdas) == 5 and all(0 < lam < 1 for lam in lambdas)


def test_soft_target_cross_entropy_is_rice_mixup_criterion():
    module = _module(mixup_alpha=1.4)
    logits, y_a, y_b, lam = torch.randn(6, 10), torch.randint(0, 10, (6,)), torch.randint(0, 10, (6,)), 0.3
    target = lam * F.one_hot(y_a, 10).float() + (1 - lam) * F.one_hot(y_b, 10).float()
    reference = lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
    assert torch.allclose(module.outer_loss(logits, target), reference)


def test_mixup_trains_with_a_data_module(digits, tmp_path):
    module = _module(mixup_alpha=1.4, val_steps=1, val_restarts=1)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                      max_steps=3, limit_val_batches=1)
    trainer.fit(module, datamodule=digits)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0 <= float(trainer.callback_metrics["train/rerr"]) <= 1


def test_mixup_needs_hard_label_options_off():
    for option in ({"label_smoothing": 0.1}, {"label_noise": 0.1}, {"ignore_incorrect": True},
                   {"prevent_label_leaking": True}):
        with pytest.raises(ConfigurationError, match="mixup_alpha"):
            _module(mixup_alpha=1.4, **option)
    with pytest.raises(ConfigurationError, match="mixup_alpha"):
        _module(mixup_alpha=-1.0)
