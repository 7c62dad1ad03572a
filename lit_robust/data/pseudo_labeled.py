"""Batches of half labelled, half pseudo-labelled examples (Carmon et al. 2019, robust self-training)."""

import os
import zipfile
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import ConfigurationError

SETTING = "pseudo_labeled_path"


class PseudoLabeled(Dataset):
    """Pseudo-labelled images kept as uint8 NHWC, turned into [0, 1] CHW tensors one at a time.

    Args:
        images: uint8 array (N, H, W, C).
        labels: integer array (N,).
        transform: a training transform of a PIL image into a tensor (the base data module's), or
            None for no augmentation.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[Callable] = None) -> None:
        self.images, self.labels, self.transform = images, torch.from_numpy(labels.astype(np.int64)), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image = self.images[index]
        if self.transform is not None:
            return self.transform(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)), self.labels[index]
        return torch.from_numpy(image).permute(2, 0, 1).float().div(255), self.labels[index]


class Paired(Dataset):
    """Item i: the labelled example i and a pseudo-labelled example drawn uniformly at random (with
    replacement, as the official code draws its unlabelled part).

    The draws come from a generator of each process (and data-loading worker) whose seed includes
    the DDP rank: with one global seed on every rank, the global random stream would draw the same
    pseudo-labelled examples on every process.

    Args:
        labelled: the labelled training set.
        pseudo_labeled: the pseudo-labelled set.
        rank: this process's rank under DDP.
    """

    def __init__(self, labelled: Dataset, pseudo_labeled: Dataset, rank: int = 0) -> None:
        self.labelled, self.pseudo_labeled, self.rank = labelled, pseudo_labeled, rank
        self.generator, self.owner = torch.Generator(), None

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int):
        return self.labelled[index], self.pseudo_labeled[self.draw()]

    def draw(self) -> int:
        """A uniform index into the pseudo-labelled set."""
        worker = get_worker_info()
        owner = (os.getpid(), None if worker is None else worker.id, self.rank)
        if owner != self.owner:
            seed = torch.initial_seed() if worker is None else worker.seed
            self.generator.manual_seed((seed + 1_000_003 * self.rank) % 2 ** 63)
            self.owner = owner
        return int(torch.randint(len(self.pseudo_labeled), (), generator=self.generator))


def labelled_then_pseudo_labeled(pairs) -> Tuple[Tensor, Tensor]:
    """Collate pairs into one batch (x, y): the labelled examples first, then the pseudo-labelled ones."""
    labelled, pseudo_labeled = default_collate(pairs)
    return torch.cat([labelled[0], pseudo_labeled[0]]), torch.cat([labelled[1], pseudo_labeled[1]])


def read_header(archive: zipfile.ZipFile, key: str) -> Tuple[tuple, np.dtype]:
    """Shape and dtype of the array ``key`` of an ``.npz`` file, read without loading it."""
    with archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


class PseudoLabeledDataModule(AdversarialDataModule):
    """A base data module plus pseudo-labelled images: every training batch is half labelled, half
    pseudo-labelled (Carmon et al. 2019, "Unlabeled data improves adversarial robustness"; Stutz et al. 2021, supplement
    Sec. G, "Additional unlabeled examples").

    The pseudo-labelled examples come from a user-supplied ``.npz`` file with ``images``, uint8 of
    shape (N, H, W, C) matching the base's images, and ``labels``, integers in [0, num_classes) of
    shape (N,); it is read without pickle. (The official 500K TinyImages file is a pickle with
    ``data`` and ``extrapolated_targets``; convert it once with
    ``np.savez(path, images=d["data"], labels=d["extrapolated_targets"])``.) The file is checked when
    the data module is constructed.

    A training batch of ``batch_size`` (the base's) is ``batch_size / 2`` labelled examples in
    the base's order, followed by as many pseudo-labelled examples drawn at random with replacement,
    as the official code. Pseudo-labelled images get the base's training augmentation where it has
    one (``train_transform``, as the vision data modules), otherwise none. An epoch is one pass over
    the labelled examples, twice the steps of an epoch of the base; the official code's epoch (and so
    Stutz et al.'s) is half of that, 50000 examples of which half are labelled. The held-out,
    evaluation and train-eval loaders are the base's.

    Args:
        base: the labelled data (e.g. ``lit_robust.data.CIFAR10DataModule``); its ``batch_size``
            (even) is the size of the mixed batches.
        pseudo_labeled_path: the ``.npz`` file with ``images`` and ``labels``.
    """

    def __init__(self, base: AdversarialDataModule, pseudo_labeled_path: str) -> None:
        if not isinstance(base, AdversarialDataModule):
            raise ConfigurationError(f"base={type(base).__name__!r} is not allowed: base must be a data module "
                                     "of lit_robust.data (an AdversarialDataModule).")
        if base.batch_size % 2:
            raise ConfigurationError(f"base.batch_size={base.batch_size!r} is not allowed: base.batch_size must be "
                                     "even, half labelled and half pseudo-labelled examples.")
        super().__init__(batch_size=base.batch_size, eval_batch_size=base.eval_batch_size,
                         num_workers=base.num_workers)
        self.base = base
        self.num_classes, self.image_shape = base.num_classes, tuple(base.image_shape)
        self.pseudo_labeled_path = os.path.expanduser(pseudo_labeled_path)
        self.verify()

    def verify(self) -> None:
        """Raise :class:`ConfigurationError` unless the file holds uint8 images of the base's shape and valid labels."""
        channels, height, width = self.image_shape
        expected = (f"an .npz file (numpy.savez) with 'images', uint8 of shape (N, {height}, {width}, {channels}), "
                    f"and 'labels', integers in [0, {self.num_classes}) of shape (N,)")

        def fail(problem: str) -> None:
            raise ConfigurationError(f"{SETTING}={self.pseudo_labeled_path!r} is not allowed ({problem}): "
                                     f"{SETTING} must be {expected}.")

        if not os.path.isfile(self.pseudo_labeled_path):
            fail("no such file")
        if not zipfile.is_zipfile(self.pseudo_labeled_path):
            fail("not an .npz archive")
        with zipfile.ZipFile(self.pseudo_labeled_path) as archive:
            keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
            if not {"images", "labels"} <= keys:
                fail(f"it holds {sorted(keys)}")
            try:
                (images_shape, images_dtype), (labels_shape, labels_dtype) = (
                    read_header(archive, "images"), read_header(archive, "labels"))
            except ValueError as error:
                fail(f"unreadable array: {error}")
        if images_dtype != np.uint8 or tuple(images_shape[1:]) != (height, width, channels):
            fail(f"images are {images_dtype} of shape {images_shape}")
        if labels_dtype.kind not in "iu" or len(labels_shape) != 1 or labels_shape[0] != images_shape[0]:
            fail(f"labels are {labels_dtype} of shape {labels_shape} for {images_shape[0]} images")
        if images_shape[0] == 0:
            fail("it holds no images")
        with np.load(self.pseudo_labeled_path, allow_pickle=False) as archive:
            labels = archive["labels"]
        if labels.min() < 0 or labels.max() >= self.num_classes:
            fail(f"labels range from {labels.min()} to {labels.max()}")

    def prepare_data(self) -> None:
        self.base.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.base.setup(stage)
            with np.load(self.pseudo_labeled_path, allow_pickle=False) as archive:
                pseudo_labeled = PseudoLabeled(archive["images"], archive["labels"],
                                               getattr(self.base, "train_transform", None))
            self.train_set = Paired(self.base.train_set, pseudo_labeled)
            self.held_out_set, self.eval_set = self.base.held_out_set, self.base.eval_set
            self.train_eval_set = self.base.train_eval_set
        # also when set up before the processes started (ddp_spawn)
        self.train_set.rank = self.trainer.global_rank if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        """Mixed batches: ``batch_size / 2`` labelled examples, then as many pseudo-labelled ones."""
        return DataLoader(self.train_set, batch_size=self.batch_size // 2, shuffle=True,
                          collate_fn=labelled_then_pseudo_labeled, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
