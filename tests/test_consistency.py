"""Consistency regularisation (Tack et al. 2022): two augmented views per image from the data module, each
attacked on its own, CE on both adversarial views + lambda * JS with temperature T between them."""

import copy

import numpy as np
import pytest
import torch
from pytorch_lightning import Trainer

from lit_robust.attacks import PGD
from lit_robust.data import DigitsDataModule, PseudoLabeledDataModule
from lit_robust.data.views import AugmentedViews
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import Consistency
from tests.helpers import step_and_attack

LAM, T = 2.0, 0.5


def two_view_digits(shift=1):
    dm = DigitsDataModule(held_out_size=64, eval_size=64, train_eval_size=64, batch_size=16, eval_batch_size=64,
                          shift=shift)
    dm.setup("fit")
    dm.train_views = 2
    return dm


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reference_loss(logits_1, logits_2, y):
    """(CE(z_1, y) + CE(z_2, y)) / 2 + lambda * (KL(p_1 || m) + KL(p_2 || m)) / 2, p_i = softmax(z_i / T),
    m = (p_1 + p_2) / 2, batch means, in float64."""
    z_1, z_2, y = logits_1.double().numpy(), logits_2.double().numpy(), y.numpy()
    rows = np.arange(len(y))
    ce = (-np.log(softmax(z_1)[rows, y]).mean() - np.log(softmax(z_2)[rows, y]).mean()) / 2
    p_1, p_2 = softmax(z_1 / T), softmax(z_2 / T)
    m = (p_1 + p_2) / 2
    js = ((p_1 * np.log(p_1 / m)).sum(axis=1) + (p_2 * np.log(p_2 / m)).sum(axis=1)).mean() / 2
    return ce + LAM * js


def shifts(image, s=1):
    """Every translation of ``image`` by up to ``s`` pixels with zero padding (ShiftedDigits' augmentation)."""
    padded = torch.nn.functional.pad(image, (s, s, s, s))
    return [padded[:, i:i + 8, j:j + 8] for i in range(2 * s + 1) for j in range(2 * s + 1)]


def test_data_module_gives_two_augmented_views():
    torch.manual_seed(0)
    dm = two_view_digits(shift=1)
    (view_1, view_2), y = next(iter(dm.train_dataloader()))
    assert view_1.shape == view_2.shape == (16, 1, 8, 8) and y.shape == (16,)
    assert not torch.equal(view_1, view_2)  # independent random shifts
    image, label = dm.train_set.images[3], dm.train_set.labels[3]
    for _ in range(5):  # each view is a translation of the same image, with its label
        (first, second), item_label = AugmentedViews(dm.train_set, 2)[3]
        assert item_label == label
        assert any(torch.equal(first, t) for t in shifts(image)) and any(torch.equal(second, t) for t in shifts(image))
    plain = two_view_digits(shift=0)
    (view_1, view_2), _ = next(iter(plain.train_dataloader()))
    assert torch.equal(view_1, view_2)  # no augmentation: the same image twice
    plain.train_views = 1
    x, y = next(iter(plain.train_dataloader()))
    assert torch.is_tensor(x) and x.shape == (16, 1, 8, 8)  # the usual batches are unchanged


def test_loss_on_a_fixed_batch_equals_the_papers_objective():
    torch.manual_seed(0)
    module = Consistency(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=3, lam=LAM, temperature=T)
    (view_1, view_2), y = next(iter(two_view_digits().train_dataloader()))
    before = copy.deepcopy(module.model).train()
    loss, result = step_and_attack(module, ([view_1, view_2], y))
    logits = before(result.x_adv).detach()  # the update's pass runs on both views together, in train mode
    expected = reference_loss(logits[:16], logits[16:], y)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_each_view_is_attacked_on_its_own():
    torch.manual_seed(0)
    module = Consistency(SmallCNN(width=8), epsilon=0.1, step_size=0.025, train_steps=3)
    module.train_attack.random_start = False
    (view_1, view_2), y = next(iter(two_view_digits().train_dataloader()))
    before = copy.deepcopy(module.model)  # the step's update pass changes batch normalisation's statistics
    _, result = step_and_attack(module, ([view_1, view_2], y))
    adv_1, adv_2 = result.x_adv.chunk(2)
    assert (adv_1 - view_1).abs().max() <= 0.1 + 1e-6 and (adv_2 - view_2).abs().max() <= 0.1 + 1e-6
    alone = PGD(0.1, 0.025, 3, keep_best=False, random_start=False)
    for view, adv in ((view_1, adv_1), (view_2, adv_2)):
        assert torch.allclose(alone(before, view, y), adv, atol=1e-6)  # as if attacked by itself


def test_fit_asks_the_data_module_for_two_views(tmp_path):
    torch.manual_seed(0)
    dm = two_view_digits()
    dm.train_views = 1
    module = Consistency(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=2)
    seen = []
    original = module.training_step
    module.training_step = lambda batch, batch_idx: seen.append(batch) or original(batch, batch_idx)
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, inference_mode=False,
                      limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert dm.train_views == 2 and len(seen) == 2 and len(seen[0][0]) == 2


def test_one_view_is_one_clear_error():
    module = Consistency(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=2)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ConfigurationError, match="two augmented views"):
        module.training_step((x, y), 0)


def test_a_data_module_without_views_fails_before_training(digits, tmp_path):
    path = tmp_path / "pseudo.npz"
    np.savez(path, images=np.zeros((8, 8, 8, 1), dtype=np.uint8), labels=np.zeros(8, dtype=np.int64))
    module = Consistency(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=2)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ConfigurationError, match="^data='PseudoLabeledDataModule' is not allowed"):
        trainer.fit(module, datamodule=PseudoLabeledDataModule(digits, str(path)))
