"""Robust self-training: the pseudo-labelled data module's mixed batches and file checks; UnlabeledAT."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_robust.attacks import PGD
from lit_robust.data import DigitsDataModule, PseudoLabeledDataModule
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import UnlabeledAT
from tests.conftest import ROOT, run_train
from tests.fakedata import write_cifar10
from tests.helpers import (
    PSEUDO_LABEL,
    SMALL_ATTACKS,
    count_passes,
    robust_error_after_training,
    small_digits,
    small_network,
    trainer,
    write_pseudo_labeled,
)


def test_batches_are_half_labelled_then_half_pseudo_labelled(tmp_path):
    base = small_digits(batch_size=32)
    data = PseudoLabeledDataModule(base, write_pseudo_labeled(tmp_path / "pseudo.npz"))
    data.setup("fit")
    labelled_images = {tuple(image.flatten().tolist()) for image, _ in base.train_set}
    batches = list(data.train_dataloader())
    assert len(batches) == -(-len(base.train_set) // 16)  # an epoch is one pass over the labelled examples
    for x, y in batches:
        half = len(x) // 2
        assert len(x) % 2 == 0 and x.shape[1:] == (1, 8, 8)
        assert torch.equal(x[half:], torch.ones_like(x[half:])) and (y[half:] == PSEUDO_LABEL).all()
        assert all(tuple(image.flatten().tolist()) in labelled_images for image in x[:half])
    seen = torch.cat([y[: len(y) // 2] for _, y in batches])
    assert len(seen) == len(base.train_set)
    assert data.val_dataloader().dataset is base.held_out_set and data.test_dataloader().dataset is base.eval_set


def test_pseudo_labeled_examples_are_drawn_at_random_with_replacement(tmp_path):
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(8, 1).repeat(8, 2)
    data = PseudoLabeledDataModule(small_digits(batch_size=64), write_pseudo_labeled(tmp_path / "p.npz", images=images))
    data.setup("fit")
    drawn = torch.cat([x[len(x) // 2:, 0, 0, 0] for x, _ in data.train_dataloader()])
    indices = (drawn * 255).round().long()
    assert torch.allclose(drawn, indices / 255.0)
    assert len(drawn) > 40 and set(indices.tolist()) == set(range(40))


def test_each_ddp_rank_draws_its_own_pseudo_labeled_examples(tmp_path):
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(8, 1).repeat(8, 2)
    path = write_pseudo_labeled(tmp_path / "p.npz", images=images)

    def drawn(rank):
        data = PseudoLabeledDataModule(small_digits(batch_size=64), path)
        data.setup("fit")
        data.train_set.rank = rank  # as setup sets it from the trainer
        torch.manual_seed(0)  # one global seed on every process, as seed_everything gives
        return [round(data.train_set[i][1][0][0, 0, 0].item() * 255) for i in range(50)]

    assert drawn(0) == drawn(0) and drawn(1) == drawn(1)
    assert drawn(0) != drawn(1)


def test_base_training_transform_augments_pseudo_labeled_images(tmp_path):
    class WithTransform(DigitsDataModule):
        def __init__(self):
            super().__init__(held_out_size=64, eval_size=64, train_eval_size=64, batch_size=8)
            self.train_transform = lambda image: torch.full((1, 8, 8), float(np.asarray(image).mean()) / 255 / 2)

    data = PseudoLabeledDataModule(WithTransform(), write_pseudo_labeled(tmp_path / "p.npz"))
    data.setup("fit")
    x, _ = next(iter(data.train_dataloader()))
    assert torch.allclose(x[4:], torch.full_like(x[4:], 0.5))


def bad_files(tmp_path):
    images, labels = np.zeros((10, 8, 8, 1), dtype=np.uint8), np.zeros(10, dtype=np.int64)
    with open(tmp_path / "pickled.npz", "wb") as f:
        pickle.dump({"images": images, "labels": labels}, f)
    np.savez(tmp_path / "keys.npz", data=images, extrapolated_targets=labels)
    np.savez(tmp_path / "objects.npz", images=np.array([None] * 10, dtype=object), labels=labels)
    return {
        "missing": str(tmp_path / "nowhere.npz"),
        "pickle": str(tmp_path / "pickled.npz"),
        "keys": str(tmp_path / "keys.npz"),
        "objects": str(tmp_path / "objects.npz"),
        "float images": write_pseudo_labeled(tmp_path / "f.npz", images=images.astype(np.float32)),
        "NCHW": write_pseudo_labeled(tmp_path / "nchw.npz", images=np.zeros((10, 1, 8, 8), dtype=np.uint8)),
        "colour": write_pseudo_labeled(tmp_path / "rgb.npz", images=np.zeros((10, 8, 8, 3), dtype=np.uint8)),
        "label range": write_pseudo_labeled(tmp_path / "range.npz", images=images, labels=labels + 10),
        "label count": write_pseudo_labeled(tmp_path / "count.npz", images=images, labels=labels[:5]),
        "float labels": write_pseudo_labeled(tmp_path / "fl.npz", images=images, labels=labels.astype(np.float32)),
    }


@pytest.mark.parametrize("problem", ["missing", "pickle", "keys", "objects", "float images", "NCHW", "colour",
                                     "label range", "label count", "float labels"])
def test_a_wrong_file_fails_at_construction_naming_the_setting(tmp_path, problem):
    with pytest.raises(ConfigurationError, match=r"^pseudo_labeled_path=.*must be an \.npz file .*\(N, 8, 8, 1\)"):
        PseudoLabeledDataModule(small_digits(), bad_files(tmp_path)[problem])


def test_an_odd_batch_size_fails_at_construction(tmp_path):
    with pytest.raises(ConfigurationError, match="^base.batch_size=33"):
        PseudoLabeledDataModule(small_digits(batch_size=33), write_pseudo_labeled(tmp_path / "p.npz"))


@pytest.mark.parametrize("base_loss", ["at", "trades"])
def test_loss_is_the_base_robust_loss_on_the_whole_batch(base_loss, digits):
    torch.manual_seed(0)
    module = UnlabeledAT(SmallCNN(width=8), base_loss=base_loss, lam=3.0, train_steps=3, **SMALL_ATTACKS)
    module.eval()  # batch normalisation per example, so that the reference is computed the same way
    module.log_dict = lambda *a, **k: None
    x, y = next(iter(digits.train_dataloader()))
    torch.manual_seed(1)
    loss = module.training_step((x, y), 0)["loss"]
    torch.manual_seed(1)
    if base_loss == "at":
        x_adv = PGD(0.1, 0.025, 3, keep_best=False)(module.model, x, y)
        expected = F.cross_entropy(module.model(x_adv), y)
    else:  # Stutz et al. 2021, supplement Eq. 13, the attack maximising the KL term from x + 0.001 N(0, 1)
        x_adv = PGD(0.1, 0.025, 3, loss="kl", keep_best=False, init_std=0.001)(module.model, x, y)
        p, q = F.softmax(module.model(x), dim=1), F.softmax(module.model(x_adv), dim=1)
        kl = (p * (p.log() - q.log())).sum(dim=1).mean()
        expected = -p.gather(1, y[:, None]).log().mean() + 3.0 * kl
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("base_loss, expected", [("at", (8, 7, 1)), ("trades", (10, 7, 1))])
def test_pass_counts_with_pgd7(base_loss, expected, digits):
    module = UnlabeledAT(SmallCNN(width=8), base_loss=base_loss, train_steps=7, **SMALL_ATTACKS)
    assert count_passes(module, next(iter(digits.train_dataloader()))) == expected


def test_trains_robust_on_digits_with_pseudo_labels(tmp_path):
    # the held-out and evaluation digits are not among the pseudo-labelled ones: the training digits are
    base = small_digits(batch_size=64, eval_batch_size=64)
    base.setup("fit")
    train_images = torch.stack([image for image, _ in base.train_set])
    train_labels = torch.stack([label for _, label in base.train_set])
    uint8_images = (train_images * 255).round().byte().permute(0, 2, 3, 1).numpy()
    path = write_pseudo_labeled(tmp_path / "p.npz", images=uint8_images, labels=train_labels.numpy())
    data = PseudoLabeledDataModule(base, path)
    torch.manual_seed(0)
    module = UnlabeledAT(small_network(), base_loss="trades", train_steps=3,
                         optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **SMALL_ATTACKS)
    assert robust_error_after_training(module, data, tmp_path, max_epochs=2) < 0.6  # chance is 0.9


def test_refuses_to_train_without_pseudo_labeled_data(digits, tmp_path):
    module = UnlabeledAT(small_network(), **SMALL_ATTACKS)
    with pytest.raises(ConfigurationError, match="^data='DigitsDataModule'"):
        trainer(tmp_path).fit(module, datamodule=digits)


@pytest.mark.parametrize("kwargs, setting", [(dict(base_loss="mart"), "base_loss"), (dict(lam=-1.0), "lam")])
def test_bad_settings_fail_at_construction(kwargs, setting):
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        UnlabeledAT(SmallCNN(width=8), **kwargs)


def test_cifar10_recipe_runs_with_tiny_data(tmp_path, monkeypatch):
    """configs/cifar10/unlabeled_at.yaml after at.yaml, as its header says, on tiny CIFAR-10 and pseudo-labels."""
    data_dir = write_cifar10(tmp_path / "data", monkeypatch, train_size=16, test_size=12)
    rng = np.random.default_rng(0)
    pseudo = write_pseudo_labeled(tmp_path / "ti.npz", images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                                  labels=rng.integers(0, 10, 20))
    configs = [os.path.join(ROOT, "configs", "cifar10", name) for name in ("at.yaml", "unlabeled_at.yaml")]
    base = "--data.init_args.base.init_args."
    arguments = ["fit", "--config", configs[0], "--config", configs[1], f"{base}data_dir", data_dir,
                 "--data.init_args.pseudo_labeled_path", pseudo, f"{base}batch_size", "8", f"{base}held_out_size", "4",
                 f"{base}eval_size", "4", f"{base}train_eval_size", "4", f"{base}num_workers", "0",
                 "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                 "--trainer.enable_progress_bar", "false", "--model.init_args.model.init_args.width", "4",
                 "--model.init_args.val_steps", "1", "--model.init_args.val_restarts", "1",
                 "--model.init_args.test_steps", "1", "--model.init_args.test_restarts", "1",
                 "--model.init_args.autoattack", "false"]
    assert run_train(arguments, cwd=str(tmp_path)) == 0
    assert os.path.exists(tmp_path / "metrics.json")
