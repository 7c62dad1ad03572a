"""The embedded default data set: scikit-learn's bundled handwritten digits (no download)."""

from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from lit_robust.data.base import AdversarialDataModule
from lit_robust.errors import check


class ShiftedDigits(Dataset):
    """Training images with a random translation of up to ``shift`` pixels (zero padding) and no flip,
    the digits' counterpart of the random crop used on CIFAR-10."""

    def __init__(self, images: Tensor, labels: Tensor, shift: int) -> None:
        self.images, self.labels, self.shift = images, labels, shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.shift > 0:
            s = self.shift
            padded = torch.nn.functional.pad(image, (s, s, s, s))
            i, j = torch.randint(0, 2 * s + 1, (2,)).tolist()
            image = padded[:, i:i + image.shape[1], j:j + image.shape[2]]
        return image, self.labels[index]


class DigitsDataModule(AdversarialDataModule):
    """1797 real 8x8 grey-scale digits (10 classes) from scikit-learn, scaled to [0, 1], shape (N, 1, 8, 8).

    A fixed seeded permutation splits them into held-out (early stopping), evaluation and training
    examples; training uses the first ``train_size`` training examples (fewer examples overfit
    sooner), and train-eval is the first ``train_eval_size`` of those, without augmentation. The
    held-out and evaluation splits do not depend on ``train_size``.

    Args:
        held_out_size: examples held out for early stopping.
        eval_size: examples of the evaluation split.
        train_eval_size: training examples used for evaluation on training data.
        train_size: train on the first this many training examples; ``None`` (default): all
            ``1797 - held_out_size - eval_size``.
        split_seed: seed of the permutation that makes the splits (independent of the training seed).
        shift: random translation of training images by up to this many pixels (0: no augmentation).
        batch_size: training batch size.
        eval_batch_size: batch size of the evaluation loaders.
        num_workers: data-loading worker processes.
    """

    total_size = 1797
    num_classes = 10
    image_shape = (1, 8, 8)
    # pixel statistics of the training images, which the networks' normalisation must use
    mean = (0.3062,)
    std = (0.3779,)

    def __init__(self, held_out_size: int = 200, eval_size: int = 400, train_eval_size: int = 400,
                 split_seed: int = 0, shift: int = 0, batch_size: int = 64, eval_batch_size: Optional[int] = 200,
                 num_workers: int = 0, train_size: Optional[int] = None) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        check(held_out_size >= 1, "held_out_size", held_out_size, "an integer >= 1")
        check(eval_size >= 1, "eval_size", eval_size, "an integer >= 1")
        available = self.total_size - held_out_size - eval_size
        check(available >= 1, "held_out_size + eval_size", held_out_size + eval_size,
              f"smaller than the {self.total_size} images of the digits data set")
        check(train_size is None or 1 <= train_size <= available, "train_size", train_size,
              f"null (all) or an integer between 1 and the {available} training images left by held_out_size "
              f"and eval_size")
        train_size = available if train_size is None else train_size
        check(1 <= train_eval_size <= train_size, "train_eval_size", train_eval_size,
              f"between 1 and the {train_size} training images used (train_size)")
        check(0 <= shift <= 3, "shift", shift, "an integer in [0, 3] (pixels of an 8x8 image)")
        self.held_out_size, self.eval_size, self.train_eval_size = held_out_size, eval_size, train_eval_size
        self.split_seed, self.shift, self.train_size = split_seed, shift, train_size

    @staticmethod
    def load() -> tuple:
        """All 1797 images as float32 (N, 1, 8, 8) in [0, 1] and int64 labels."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
        return images, torch.from_numpy(digits.target.astype(np.int64))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        images, labels = self.load()
        order = torch.randperm(self.total_size, generator=torch.Generator().manual_seed(self.split_seed))
        eval_idx = order[: self.eval_size]
        held_out_idx = order[self.eval_size: self.eval_size + self.held_out_size]
        train_idx = order[self.eval_size + self.held_out_size:][: self.train_size]
        plain = TensorDataset(images, labels)
        self.eval_set = Subset(plain, eval_idx.tolist())
        self.held_out_set = Subset(plain, held_out_idx.tolist())
        self.train_eval_set = Subset(plain, train_idx[: self.train_eval_size].tolist())
        self.train_set = ShiftedDigits(images[train_idx], labels[train_idx], self.shift)
