"""Rotation self-supervision (Stutz et al. 2021, supplement Eq. 16): rotations and their labels, loss, attacks,
passes, training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import RotationSelfSupervised
from lit_robust.modules import rotation as rotation_module
from lit_robust.modules.rotation import random_rotations, rotate
from tests.helpers import SMALL_ATTACKS, robust_error_after_training


def test_rotation_labels_match_the_rotations():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 5, 5)
    x_rot, y_rot = random_rotations(x)
    assert set(y_rot.tolist()) == {0, 1, 2, 3}
    for image, rotated, k in zip(x, x_rot, y_rot.tolist()):
        assert np.array_equal(rotated.numpy(), np.rot90(image.numpy(), k=k, axes=(1, 2)))
    square = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # 90 degrees counter-clockwise: the top row goes left
    assert torch.equal(rotate(square, torch.tensor([1])), torch.tensor([[[[2.0, 4.0], [1.0, 3.0]]]]))


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square"):
        rotate(torch.rand(2, 1, 4, 6), torch.tensor([1, 2]))


def test_loss_is_eq16_and_each_half_attacks_its_own_head(digits, monkeypatch):
    torch.manual_seed(0)
    module = RotationSelfSupervised(SmallCNN(width=8), lam=2.0, **SMALL_ATTACKS)
    module.eval()  # batch normalisation per example, so that the reference can be computed separately
    module.log_dict = lambda *a, **k: None
    x, y = next(iter(digits.train_dataloader()))
    half = len(x) // 2
    r = torch.arange(len(x) - half) % 4
    monkeypatch.setattr(rotation_module, "random_rotations", lambda images: (rotate(images, r), r))
    attacked = []

    def recording_attack(model, images, labels):
        attacked.append((model(images).shape[1], labels))
        return images + 0.01

    module.train_attack = recording_attack
    loss = module.training_step((x, y), 0)["loss"]
    (classes, labels_1), (rotations, labels_2) = attacked
    assert classes == 10 and torch.equal(labels_1, y[:half])
    assert rotations == 4 and torch.equal(labels_2, r)
    rotated = torch.from_numpy(np.stack([np.rot90(i.numpy(), k=k, axes=(1, 2)) for i, k in zip(x[half:], r.tolist())]))
    head = module.rotation_head
    rotation_logits = F.linear(module.model.forward_features(rotated.float() + 0.01), head.weight, head.bias)
    expected = F.cross_entropy(module.model(x[:half] + 0.01), y[:half]) + 2.0 * F.cross_entropy(rotation_logits, r)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_pgd_on_the_rotation_half_raises_the_rotation_loss(digits):
    torch.manual_seed(0)
    module = RotationSelfSupervised(SmallCNN(width=8), train_steps=5, **SMALL_ATTACKS)
    x, _ = next(iter(digits.train_dataloader()))
    x_rot, y_rot = random_rotations(x)
    predictor = rotation_module.RotationPredictor(module.model, module.rotation_head).eval()
    x_adv = module.train_attack(predictor, x_rot, y_rot)
    x_noise = (x_rot + 0.1 * torch.randn_like(x_rot).sign()).clamp(0, 1)
    with torch.no_grad():
        adversarial, clean = F.cross_entropy(predictor(x_adv), y_rot), F.cross_entropy(predictor(x_rot), y_rot)
        assert adversarial > clean + 0.005 and adversarial > F.cross_entropy(predictor(x_noise), y_rot) + 0.005


def test_pass_counts_with_pgd7(digits):
    torch.manual_seed(0)
    module = RotationSelfSupervised(SmallCNN(width=8), train_steps=7, **SMALL_ATTACKS)
    module.log_dict = lambda *a, **k: None
    counts = {"forward": 0, "input": 0, "weights": 0}

    def count(key):
        counts[key] += 1

    def pre_hook(_, args):  # the features are where both heads' passes go through
        count("forward")
        if args[0].requires_grad:
            args[0].register_hook(lambda grad: count("input"))

    module.model.features.register_forward_pre_hook(pre_hook)
    module.model.features[0][0].weight.register_hook(lambda grad: count("weights"))
    module.training_step(next(iter(digits.train_dataloader())), 0)["loss"].backward()
    # per half: 7 attack iterations + 1 for the update; in whole-batch passes 8 forward, 7 input-only backward
    assert counts == {"forward": 16, "input": 14, "weights": 1}


def test_trains_robust_on_digits(digits, tmp_path):
    torch.manual_seed(0)
    module = RotationSelfSupervised(SmallCNN(width=8), lam=1.0, train_steps=3,
                                    optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **SMALL_ATTACKS)
    assert robust_error_after_training(module, digits, tmp_path, max_epochs=3) < 0.6  # chance is 0.9


@pytest.mark.parametrize("kwargs, setting", [
    (dict(lam=-1.0), "lam"),
    (dict(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), "model"),
])
def test_bad_settings_fail_at_construction(kwargs, setting):
    kwargs.setdefault("model", SmallCNN(width=8))
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        RotationSelfSupervised(**kwargs)
