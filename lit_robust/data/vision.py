"""CIFAR-10, CIFAR-100, SVHN and MNIST through torchvision's own dataset classes.

The splits are the paper's (Stutz et al. 2021, supplement Sec. F): all training images for training; the *last*
``held_out_size`` (500) test images held out for early stopping (``val_dataloader``); the *first*
``eval_size`` (1000) test images for evaluation (``test_dataloader``); the first
``train_eval_size`` (1000) training images, without augmentation, for evaluation on training data
(``train_eval_dataloader``). Only the training loader is augmented (see
:mod:`lit_robust.data.augment`).

The data are read from ``data_dir`` in the official format torchvision reads (and downloads,
only when ``download`` is true). A missing or corrupted data set is reported when the data module
is constructed, before a trainer writes anything, with the directory, the files expected there
and how to get them.
"""

import os
from abc import ABC, abstractmethod
from typing import List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from lit_robust.data.augment import eval_transform, train_transform
from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError, check


class Transformed(Dataset):
    """The examples ``indices`` of ``dataset`` (PIL image, label), with ``transform`` applied to the image."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform) -> None:
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.dataset[self.indices[index]]
        return self.transform(image), label


class VisionDataModule(AdversarialDataModule, ABC):
    """A torchvision image-classification data set with the paper's splits and augmentation.

    Subclasses name the torchvision class, the data set's statistics and the files it needs.

    Args:
        data_dir: directory holding the data set in torchvision's layout (the ``root`` of its class).
        download: let torchvision download the data set into ``data_dir`` if it is not there.
        held_out_size: the last test images, held out for early stopping (500 in the paper).
        eval_size: the first test images, used for evaluation (1000 in the paper).
        train_eval_size: the first training images, used without augmentation for evaluation on
            training data (1000 in the paper).
        crop_padding: random crop with this much zero padding per side (4 in the paper; 0: none).
        flip: random horizontal flip.
        autoaugment: AutoAugment with torchvision's CIFAR-10 policy after crop and flip
            (Stutz et al. 2021, supplement Sec. G, with ``cutout_size: 16``).
        cutout_size: side of the Cutout square, filled with the data set's mean (0: no Cutout).
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size of the evaluation loaders (default: ``batch_size``).
        num_workers: data-loading worker processes.
    """

    name: str
    dataset_class: type
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    train_size: int
    test_size: int

    def __init__(self, data_dir: str, download: bool = False, held_out_size: int = 500, eval_size: int = 1000,
                 train_eval_size: int = 1000, crop_padding: int = 4, flip: bool = True, autoaugment: bool = False,
                 cutout_size: int = 0, batch_size: int = 128, eval_batch_size: Optional[int] = None,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        check(held_out_size >= 1, "held_out_size", held_out_size, "an integer >= 1")
        check(eval_size >= 1, "eval_size", eval_size, "an integer >= 1")
        check(held_out_size + eval_size <= self.test_size, "held_out_size + eval_size", held_out_size + eval_size,
              f"at most the {self.test_size} test images of {self.name}, so that the splits are disjoint")
        check(1 <= train_eval_size <= self.train_size, "train_eval_size", train_eval_size,
              f"between 1 and the {self.train_size} training images of {self.name}")
        check(crop_padding >= 0, "crop_padding", crop_padding, "an integer >= 0")
        check(cutout_size >= 0, "cutout_size", cutout_size, "an integer >= 0")
        self.data_dir, self.download = os.path.expanduser(data_dir), download
        self.held_out_size, self.eval_size, self.train_eval_size = held_out_size, eval_size, train_eval_size
        self.train_transform = train_transform(self.image_shape[-1], crop_padding, flip, autoaugment, cutout_size,
                                               fill=self.mean)
        if not download:
            self.verify()

    @abstractmethod
    def expected_files(self) -> List[Tuple[str, Optional[str]]]:
        """The files of the data set, relative to ``data_dir``, with their MD5 checksum (None: unknown)."""

    def is_intact(self, path: str, md5: Optional[str]) -> bool:
        """Whether the file at ``path`` has the checksum ``md5``."""
        return check_integrity(path, md5)

    def verify(self) -> None:
        """Raise :class:`ConfigurationError` unless every expected file is present and intact."""
        missing, corrupt = [], []
        for name, md5 in self.expected_files():
            path = os.path.join(self.data_dir, name)
            if not os.path.isfile(path):
                missing.append(name)
            elif not self.is_intact(path, md5):
                corrupt.append(name)
        if not missing and not corrupt:
            return
        expected = [name for name, _ in self.expected_files()]
        problems = []
        if missing:
            problems.append("none of its files is there" if len(missing) == len(expected)
                            else "missing: " + ", ".join(missing))
        if corrupt:
            problems.append("corrupted (wrong checksum or format): " + ", ".join(corrupt))
        raise ConfigurationError(
            f"data_dir={self.data_dir!r} does not hold the {self.name} data set ({'; '.join(problems)}). "
            f"Expected there, in the official format torchvision reads: {', '.join(expected)}. To get them, "
            f"add --data.download true (torchvision downloads {self.name} into data_dir), or point "
            f"--data.data_dir at a directory that holds them.")

    @abstractmethod
    def torchvision_dataset(self, train: bool, download: bool = False) -> Dataset:
        """The torchvision data set (training or test part), returning PIL images and integer labels."""

    def prepare_data(self) -> None:
        if self.download:
            self.torchvision_dataset(train=True, download=True)
            self.torchvision_dataset(train=False, download=True)
            self.verify()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train, test = self.torchvision_dataset(train=True), self.torchvision_dataset(train=False)
        check(self.held_out_size + self.eval_size <= len(test), "held_out_size + eval_size",
              self.held_out_size + self.eval_size, f"at most the {len(test)} test images in {self.data_dir}")
        check(self.train_eval_size <= len(train), "train_eval_size", self.train_eval_size,
              f"at most the {len(train)} training images in {self.data_dir}")
        plain = eval_transform()
        self.train_set = Transformed(train, range(len(train)), self.train_transform)
        self.train_eval_set = Transformed(train, range(self.train_eval_size), plain)
        self.eval_set = Transformed(test, range(self.eval_size), plain)
        self.held_out_set = Transformed(test, range(len(test) - self.held_out_size, len(test)), plain)


class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50000 training and 10000 test 32x32 colour images, 10 classes.

    ``data_dir`` holds ``cifar-10-batches-py/`` (the python version of the official archive).
    See :class:`VisionDataModule` for the arguments.
    """

    name = "CIFAR-10"
    dataset_class = datasets.CIFAR10
    num_classes = 10
    image_shape = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    train_size, test_size = 50000, 10000

    def expected_files(self) -> List[Tuple[str, Optional[str]]]:
        cls = self.dataset_class
        files = [(os.path.join(cls.base_folder, name), md5) for name, md5 in cls.train_list + cls.test_list]
        return files + [(os.path.join(cls.base_folder, cls.meta["filename"]), cls.meta["md5"])]

    def torchvision_dataset(self, train: bool, download: bool = False) -> Dataset:
        return self.dataset_class(self.data_dir, train=train, download=download)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 50000 training and 10000 test 32x32 colour images, 100 (fine) classes.

    ``data_dir`` holds ``cifar-100-python/``. See :class:`VisionDataModule` for the arguments.
    """

    name = "CIFAR-100"
    dataset_class = datasets.CIFAR100
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)


class SVHNDataModule(VisionDataModule):
    """SVHN (Netzer et al. 2011): 73257 training and 26032 test 32x32 digit images, 10 classes.

    ``data_dir`` holds ``train_32x32.mat`` and ``test_32x32.mat`` (the "extra" part is not used).
    Digits are not mirror-symmetric, so there is no flip by default. See :class:`VisionDataModule`
    for the other arguments.
    """

    name = "SVHN"
    dataset_class = datasets.SVHN
    num_classes = 10
    image_shape = (3, 32, 32)
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    train_size, test_size = 73257, 26032

    def __init__(self, data_dir: str, download: bool = False, crop_padding: int = 4, flip: bool = False,
                 **kwargs) -> None:
        super().__init__(data_dir, download=download, crop_padding=crop_padding, flip=flip, **kwargs)

    def expected_files(self) -> List[Tuple[str, Optional[str]]]:
        return [(self.dataset_class.split_list[split][1], self.dataset_class.split_list[split][2])
                for split in ("train", "test")]

    def torchvision_dataset(self, train: bool, download: bool = False) -> Dataset:
        return self.dataset_class(self.data_dir, split="train" if train else "test", download=download)


class MNISTDataModule(VisionDataModule):
    """MNIST (LeCun et al. 1998): 60000 training and 10000 test 28x28 grey-scale digits, 10 classes.

    ``data_dir`` holds ``MNIST/raw/`` with the four uncompressed idx files. There is no
    augmentation by default (as Madry et al.). See :class:`VisionDataModule` for the other arguments.
    """

    name = "MNIST"
    dataset_class = datasets.MNIST
    num_classes = 10
    image_shape = (1, 28, 28)
    mean = (0.1307,)
    std = (0.3081,)
    train_size, test_size = 60000, 10000

    def __init__(self, data_dir: str, download: bool = False, crop_padding: int = 0, flip: bool = False,
                 **kwargs) -> None:
        super().__init__(data_dir, download=download, crop_padding=crop_padding, flip=flip, **kwargs)

    def expected_files(self) -> List[Tuple[str, Optional[str]]]:
        # torchvision's checksums are those of the .gz archives; the idx files are checked by format
        return [(os.path.join("MNIST", "raw", os.path.splitext(archive)[0]), None)
                for archive, _ in self.dataset_class.resources]

    def is_intact(self, path: str, md5: Optional[str]) -> bool:
        """Whether ``path`` is an idx file of unsigned bytes whose size matches its header."""
        with open(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4 or header[:3] != b"\x00\x00\x08" or header[3] not in (1, 3):
                return False
            dims = np.frombuffer(f.read(4 * header[3]), dtype=">i4")
        return len(dims) == header[3] and os.path.getsize(path) == 4 + 4 * len(dims) + int(np.prod(dims))

    def torchvision_dataset(self, train: bool, download: bool = False) -> Dataset:
        return self.dataset_class(self.data_dir, train=train, download=download)
