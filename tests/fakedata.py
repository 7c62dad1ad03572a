"""Tiny data sets in the real on-disk formats torchvision reads, for tests (no downloads).

Each ``write_*`` function writes a few random images into ``root`` in the official layout
(CIFAR-10/100 python pickles, SVHN .mat files, MNIST idx files) and returns ``root`` as a string,
to pass as ``data_dir``. torchvision checks CIFAR and SVHN files against the MD5 checksums of the
official releases, so these functions take pytest's ``monkeypatch`` and make torchvision (and the
data modules, which use the same tables) accept the checksums of the files written, for the
duration of the test.

Every image carries its identity in the first three pixels of channel 0: ``index % 256``,
``index // 256`` and 255 for test images, 0 for training images; :func:`identify` reads it back
from an unaugmented [0, 1] tensor.

Usage::

    from tests.fakedata import write_cifar10

    def test_something(tmp_path, monkeypatch):
        dm = CIFAR10DataModule(write_cifar10(tmp_path, monkeypatch), held_out_size=8, eval_size=16,
                               train_eval_size=16)
"""

import hashlib
import os
import pickle
from typing import Tuple

import numpy as np
import scipy.io
from torchvision import datasets

TEST_MARK = 255


def _images(count: int, shape: Tuple[int, ...], test: bool, seed: int) -> np.ndarray:
    """Random uint8 images (N, C, H, W) carrying their index and split in the first pixels of channel 0."""
    images = np.random.default_rng(seed).integers(0, 256, (count,) + shape, dtype=np.uint8)
    index = np.arange(count)
    images[:, 0, 0, 0] = index % 256
    images[:, 0, 0, 1] = index // 256
    images[:, 0, 0, 2] = TEST_MARK if test else 0
    return images


def identify(image) -> Tuple[str, int]:
    """``("train" | "test", index)`` of an unaugmented [0, 1] image tensor of a fake data set."""
    pixels = [int(round(float(v) * 255)) for v in image[0, 0, :3]]
    return ("test" if pixels[2] == TEST_MARK else "train"), pixels[0] + 256 * pixels[1]


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _pickle(path: str, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def _write_cifar(root, monkeypatch, dataset_class, num_classes: int, train_size: int, test_size: int,
                 seed: int) -> str:
    folder = os.path.join(str(root), dataset_class.base_folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    label_key = "labels" if dataset_class is datasets.CIFAR10 else "fine_labels"
    train = _images(train_size, (3, 32, 32), False, seed).reshape(train_size, -1)
    test = _images(test_size, (3, 32, 32), True, seed + 1).reshape(test_size, -1)
    train_labels = rng.integers(0, num_classes, train_size).tolist()
    test_labels = rng.integers(0, num_classes, test_size).tolist()
    # the training part is split over the same files as the official release
    train_names = [name for name, _ in dataset_class.train_list]
    parts = np.array_split(np.arange(train_size), len(train_names))
    for name, part in zip(train_names, parts):
        _pickle(os.path.join(folder, name), {"data": train[part], label_key: [train_labels[i] for i in part]})
    (test_name, _), = dataset_class.test_list
    _pickle(os.path.join(folder, test_name), {"data": test, label_key: test_labels})
    meta = dict(dataset_class.meta)
    _pickle(os.path.join(folder, meta["filename"]), {meta["key"]: [f"class_{k}" for k in range(num_classes)]})
    monkeypatch.setattr(dataset_class, "train_list", [[name, _md5(os.path.join(folder, name))] for name in train_names])
    monkeypatch.setattr(dataset_class, "test_list", [[test_name, _md5(os.path.join(folder, test_name))]])
    meta["md5"] = _md5(os.path.join(folder, meta["filename"]))
    monkeypatch.setattr(dataset_class, "meta", meta)
    return str(root)


def write_cifar10(root, monkeypatch, train_size: int = 60, test_size: int = 40, seed: int = 0) -> str:
    """A fake ``cifar-10-batches-py/`` (five training batches, a test batch, ``batches.meta``) in ``root``."""
    return _write_cifar(root, monkeypatch, datasets.CIFAR10, 10, train_size, test_size, seed)


def write_cifar100(root, monkeypatch, train_size: int = 60, test_size: int = 40, seed: int = 0) -> str:
    """A fake ``cifar-100-python/`` (``train``, ``test``, ``meta``) in ``root``."""
    return _write_cifar(root, monkeypatch, datasets.CIFAR100, 100, train_size, test_size, seed)


def write_svhn(root, monkeypatch, train_size: int = 60, test_size: int = 40, seed: int = 0) -> str:
    """Fake ``train_32x32.mat`` and ``test_32x32.mat`` in ``root`` (MATLAB format, labels 1..10 as SVHN's)."""
    os.makedirs(str(root), exist_ok=True)
    rng = np.random.default_rng(seed)
    split_list = {key: list(value) for key, value in datasets.SVHN.split_list.items()}
    for split, count, test in (("train", train_size, False), ("test", test_size, True)):
        images = _images(count, (3, 32, 32), test, seed + test)
        path = os.path.join(str(root), split_list[split][1])
        # SVHN stores X as (H, W, C, N) and y as (N, 1) with the digit 0 labelled 10
        scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0),
                                "y": rng.integers(1, 11, (count, 1)).astype(np.uint8)})
        split_list[split][2] = _md5(path)
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)
    return str(root)


def _write_idx(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]))
        f.write(np.asarray(array.shape, dtype=">i4").tobytes())
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, monkeypatch=None, train_size: int = 60, test_size: int = 40, seed: int = 0) -> str:
    """Fake uncompressed idx files in ``root/MNIST/raw/`` (no checksums to patch; ``monkeypatch`` is unused)."""
    folder = os.path.join(str(root), "MNIST", "raw")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count, test in (("train", train_size, False), ("t10k", test_size, True)):
        _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"),
                   _images(count, (1, 28, 28), test, seed + test)[:, 0])
        _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, count))
    return str(root)
