"""The data-module contract: four loaders, for training, early stopping, evaluation and train-eval."""

from typing import Optional

from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lit_robust.data.views import AugmentedViews
from lit_robust.errors import check


class AdversarialDataModule(LightningDataModule):
    """Base of every data module of the project (docs/architecture.md, "Contracts").

    Subclasses fill ``train_set`` (augmented), ``held_out_set`` (early stopping; CIFAR-10's last 500
    test images), ``eval_set`` (evaluation; the first 1000 test images) and ``train_eval_set`` (the
    first training images, without augmentation) in :meth:`setup`, and ``num_classes`` /
    ``image_shape`` in ``__init__``.

    ``train_views`` (1 unless a module asks for more, e.g. consistency regularisation sets 2) is the
    number of independently augmented views of every training image: above 1, a training batch is
    ``([X_1, ..., X_views], Y)`` (see :class:`~lit_robust.data.views.AugmentedViews`).

    Args:
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size of the three evaluation loaders (default: ``batch_size``).
        num_workers: data-loading worker processes.
    """

    num_classes: int
    image_shape: tuple
    train_views: int = 1

    def __init__(self, batch_size: int = 128, eval_batch_size: Optional[int] = None, num_workers: int = 0) -> None:
        super().__init__()
        check(batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
        check(eval_batch_size is None or eval_batch_size >= 1, "eval_batch_size", eval_batch_size, "an integer >= 1")
        check(num_workers >= 0, "num_workers", num_workers, "an integer >= 0")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_set: Optional[Dataset] = None
        self.held_out_set: Optional[Dataset] = None
        self.eval_set: Optional[Dataset] = None
        self.train_eval_set: Optional[Dataset] = None

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """The augmented training set; ``train_views`` views of every image when above 1."""
        check(isinstance(self.train_views, int) and self.train_views >= 1, "train_views", self.train_views,
              "an integer >= 1")
        dataset = self.train_set if self.train_views == 1 else AugmentedViews(self.train_set, self.train_views)
        return self._loader(dataset, shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """The held-out split, used for early stopping."""
        return self._loader(self.held_out_set, shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """The evaluation split."""
        return self._loader(self.eval_set, shuffle=False, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The evaluation split, for ``predict``."""
        return self.test_dataloader()

    def train_eval_dataloader(self) -> DataLoader:
        """The first training examples without augmentation, for robustness and flatness on training data."""
        return self._loader(self.train_eval_set, shuffle=False, batch_size=self.eval_batch_size)
