"""CIFAR-10/100, SVHN and MNIST data modules on tiny data sets in the official on-disk formats."""

import os
import pickle

import numpy as np
import pytest
import torch

from lit_robust.data import CIFAR10DataModule, CIFAR100DataModule, MNISTDataModule, SVHNDataModule
from lit_robust.data.augment import Cutout, train_transform
from lit_robust.errors import ConfigurationError
from tests.fakedata import identify, write_cifar10, write_cifar100, write_mnist, write_svhn

CASES = {
    "cifar10": (CIFAR10DataModule, write_cifar10, (3, 32, 32), 10),
    "cifar100": (CIFAR100DataModule, write_cifar100, (3, 32, 32), 100),
    "svhn": (SVHNDataModule, write_svhn, (3, 32, 32), 10),
    "mnist": (MNISTDataModule, write_mnist, (1, 28, 28), 10),
}
SPLITS = dict(held_out_size=6, eval_size=10, train_eval_size=12)


def make(name, tmp_path, monkeypatch, train_size=40, test_size=24, **kwargs):
    data_module, write, _, _ = CASES[name]
    root = write(tmp_path / name, monkeypatch, train_size=train_size, test_size=test_size)
    dm = data_module(root, **{**SPLITS, "batch_size": 8, **kwargs})
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("name", CASES)
def test_loaders_give_images_in_unit_range_and_labels(name, tmp_path, monkeypatch):
    dm = make(name, tmp_path, monkeypatch)
    _, _, shape, num_classes = CASES[name]
    assert dm.num_classes == num_classes and tuple(dm.image_shape) == shape
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.train_eval_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape
        assert 0 <= x.min() and x.max() <= 1
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < num_classes


@pytest.mark.parametrize("name", CASES)
def test_splits_are_the_papers(name, tmp_path, monkeypatch):
    """held-out = the last test images, evaluation = the first test images, train-eval = the first
    training images (Stutz et al. 2021, supplement Sec. F); held-out and evaluation are disjoint."""
    dm = make(name, tmp_path, monkeypatch, train_size=40, test_size=24)
    held_out = [identify(x) for x, _ in dm.held_out_set]
    evaluation = [identify(x) for x, _ in dm.eval_set]
    train_eval = [identify(x) for x, _ in dm.train_eval_set]
    assert held_out == [("test", i) for i in range(24 - 6, 24)]
    assert evaluation == [("test", i) for i in range(10)]
    assert train_eval == [("train", i) for i in range(12)]
    assert not set(held_out) & set(evaluation)
    assert len(dm.train_set) == 40


def test_svhn_labels_map_ten_to_zero(tmp_path, monkeypatch):
    import scipy.io

    dm = make("svhn", tmp_path, monkeypatch)
    raw = scipy.io.loadmat(os.path.join(dm.data_dir, "test_32x32.mat"))["y"].ravel()
    assert [y for _, y in dm.eval_set] == [int(v) % 10 for v in raw[:10]]


def test_evaluation_images_are_the_stored_pixels(tmp_path, monkeypatch):
    """No augmentation outside training: evaluation images are the pickled bytes / 255, in order."""
    dm = make("cifar10", tmp_path, monkeypatch)
    with open(os.path.join(dm.data_dir, "cifar-10-batches-py", "test_batch"), "rb") as f:
        stored = pickle.load(f, encoding="latin1")
    pixels = torch.from_numpy(stored["data"].reshape(-1, 3, 32, 32)).float() / 255
    for i, (x, y) in enumerate(dm.eval_set):
        assert torch.equal(x, pixels[i]) and y == stored["labels"][i]
    for i, (x, _) in enumerate(dm.held_out_set):
        assert torch.equal(x, pixels[24 - 6 + i])


def _crop_flip_candidates(image, padding):
    """Every random crop (zero padding) of ``image``, flipped or not."""
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    size = image.shape[-1]
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + size, dx:dx + size]
            yield crop
            yield crop.flip(-1)


def test_training_images_are_crops_and_flips_of_the_stored_pixels(tmp_path, monkeypatch):
    torch.manual_seed(0)
    dm = make("cifar10", tmp_path, monkeypatch)
    changed = 0
    for index in range(12):
        x, _ = dm.train_set[index]
        original, _ = dm.train_eval_set[index]
        assert any(torch.equal(x, candidate) for candidate in _crop_flip_candidates(original, 4))
        changed += not torch.equal(x, original)
    assert changed > 6


def test_no_augmentation_when_switched_off(tmp_path, monkeypatch):
    dm = make("cifar10", tmp_path, monkeypatch, crop_padding=0, flip=False)
    for index in range(5):
        assert torch.equal(dm.train_set[index][0], dm.train_eval_set[index][0])


def test_autoaugment_and_cutout_on_top_of_crop_and_flip(tmp_path, monkeypatch):
    """Stutz et al. 2021, supplement Sec. G: crop and flip, then AutoAugment (CIFAR-10 policy), then 16x16 Cutout."""
    from torchvision import transforms

    dm = make("cifar10", tmp_path, monkeypatch, autoaugment=True, cutout_size=16)
    steps = dm.train_transform.transforms
    kinds = [type(step).__name__ for step in steps]
    assert kinds == ["RandomCrop", "RandomHorizontalFlip", "AutoAugment", "ToTensor", "Cutout"]
    assert steps[2].policy == transforms.AutoAugmentPolicy.CIFAR10
    assert steps[4].size == 16 and torch.allclose(steps[4].fill.flatten(), torch.tensor(CIFAR10DataModule.mean))
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)


def test_cutout_covers_one_clipped_square_with_the_fill():
    torch.manual_seed(0)
    fill = (0.25, 0.5, 0.75)
    cutout = Cutout(16, fill)
    areas = set()
    for _ in range(200):
        image = torch.full((3, 32, 32), 2.0)
        out = cutout(image)
        covered = out[0] != 2.0
        rows, cols = covered.any(dim=1).nonzero().flatten(), covered.any(dim=0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert 8 <= height <= 16 and 8 <= width <= 16
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width
        assert covered.sum() == height * width
        for channel, value in enumerate(fill):
            assert torch.all(out[channel][covered] == value)
        assert torch.equal(image, torch.full((3, 32, 32), 2.0))
        areas.add(height * width)
    assert 256 in areas and min(areas) < 256


def test_train_transform_without_anything_is_to_tensor():
    from PIL import Image

    array = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = train_transform(32, crop_padding=0, flip=False)(Image.fromarray(array))
    assert torch.equal(out, torch.from_numpy(array).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("name, expected", [("cifar10", "data_batch_1"), ("cifar100", "cifar-100-python"),
                                            ("svhn", "train_32x32.mat"), ("mnist", "train-images-idx3-ubyte")])
def test_missing_data_set_names_directory_files_and_download(name, expected, tmp_path):
    data_module = CASES[name][0]
    with pytest.raises(ConfigurationError) as error:
        data_module(str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and expected in message and "--data.download true" in message
    assert "none of its files is there" in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, damaged", [("cifar10", os.path.join("cifar-10-batches-py", "data_batch_3")),
                                           ("svhn", "test_32x32.mat"),
                                           ("mnist", os.path.join("MNIST", "raw", "t10k-images-idx3-ubyte"))])
def test_corrupted_data_set_is_reported(name, damaged, tmp_path, monkeypatch):
    data_module, write, _, _ = CASES[name]
    root = write(tmp_path, monkeypatch)
    path = os.path.join(root, damaged)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(ConfigurationError, match="corrupted") as error:
        data_module(root, **SPLITS)
    assert os.path.basename(damaged) in str(error.value)


def test_download_is_deferred_to_prepare_data(tmp_path, monkeypatch):
    """With download=True construction checks nothing; prepare_data lets torchvision fetch what is
    missing (here nothing: the files are there, so no network is touched) and then verifies."""
    CIFAR10DataModule(str(tmp_path / "empty"), download=True)
    root = write_cifar10(tmp_path / "present", monkeypatch)
    dm = CIFAR10DataModule(root, download=True, **SPLITS)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.eval_set) == 10


def test_split_sizes_are_checked(tmp_path, monkeypatch):
    root = write_cifar10(tmp_path, monkeypatch, train_size=40, test_size=24)
    with pytest.raises(ConfigurationError, match="held_out_size"):
        CIFAR10DataModule(root, held_out_size=5000, eval_size=6000)
    with pytest.raises(ConfigurationError, match="train_eval_size"):
        CIFAR10DataModule(root, train_eval_size=50001)
    dm = CIFAR10DataModule(root, held_out_size=20, eval_size=10)
    with pytest.raises(ConfigurationError, match="24 test images"):
        dm.setup("fit")


def test_defaults_are_the_papers():
    """The paper's split sizes, crop 4 and flip for CIFAR; no flip for digits (SVHN, MNIST)."""
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(CIFAR10DataModule.__init__).parameters.items()}
    assert (defaults["held_out_size"], defaults["eval_size"], defaults["train_eval_size"]) == (500, 1000, 1000)
    assert defaults["crop_padding"] == 4 and defaults["flip"] is True and defaults["download"] is False
    assert inspect.signature(SVHNDataModule.__init__).parameters["flip"].default is False
    assert inspect.signature(MNISTDataModule.__init__).parameters["crop_padding"].default == 0
