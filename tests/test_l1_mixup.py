"""papers/002 Table 4 inside PGD-AT: the L1 penalty on the weights and mixup."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule, Trainer
from torch import nn

from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust import modules
from lit_robust.data import DigitsDataModule, PseudoLabeledDataModule
from lit_robust.modules import PGDAT, AdversarialModule
from tests.test_unlabeled_at import write_pseudo_labeled


def _module(**kwargs):
    torch.manual_seed(0)
    return PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=2, **kwargs)


def test_negative_l1_penalty_is_refused():
    with pytest.raises(ConfigurationError, match="l1_penalty"):
        _module(l1_penalty=-1.0)


VARIANTS = [getattr(modules, name) for name in modules.__all__
            if issubclass(getattr(modules, name), AdversarialModule)
            and getattr(modules, name).training_step is not LightningModule.training_step]


def test_every_variant_is_covered():
    assert {cls.__name__ for cls in VARIANTS} >= {"PGDAT", "TRADES", "EntropySGD", "FriendlyAT", "UnlabeledAT",
                                                  "RotationSelfSupervised", "AWP", "AMP"}


# what a variant cannot be built without: networks it reads (teachers, a standard network)
REQUIRED = {"KDSWA": dict(robust_teacher=SmallCNN(width=4), standard_teacher=SmallCNN(width=4)),
            "HAT": dict(standard_model=SmallCNN(width=4))}


def first_gradients(cls, l1_penalty, tmp_path):
    """The gradients and the weights of the network right after the first backward pass of one training step
    of ``cls`` on digits (after the module's own on_after_backward)."""
    torch.manual_seed(0)
    module = cls(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=1, val_steps=1, val_restarts=1,
                 l1_penalty=l1_penalty, **REQUIRED.get(cls.__name__, {}))
    data = DigitsDataModule(held_out_size=32, eval_size=32, train_eval_size=32, batch_size=32)
    if cls is modules.UnlabeledAT:
        data = PseudoLabeledDataModule(data, write_pseudo_labeled(tmp_path / "pseudo.npz"))
    recorded = {}
    hook = module.on_after_backward

    def record():
        hook()
        if not recorded:
            recorded.update({name: (w.grad.clone(), w.detach().clone()) for name, w in module.model.named_parameters()
                             if w.grad is not None})

    module.on_after_backward = record
    Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, accelerator="cpu", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            inference_mode=False).fit(module, datamodule=data)
    # the weights of convolutional and linear layers (papers/002 Table 4: no biases, no batch normalisation)
    return recorded, {f"{name}.weight" for name, layer in module.model.named_modules()
                      if isinstance(layer, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda cls: cls.__name__)
def test_l1_penalty_adds_lambda_sign_w_to_the_gradient_of_every_variant(cls, tmp_path):
    lam = 1e-2
    without, _ = first_gradients(cls, 0.0, tmp_path)
    with_l1, selected = first_gradients(cls, lam, tmp_path)
    assert without.keys() == with_l1.keys() and selected
    for name, (grad, weight) in with_l1.items():
        expected = lam * weight.sign() if name in selected else torch.zeros_like(weight)
        assert torch.allclose(grad - without[name][0], expected, atol=1e-6), name


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
