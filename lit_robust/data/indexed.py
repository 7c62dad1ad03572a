"""Training examples with their index in the data set, for methods that keep per-example state."""

from typing import Any, Tuple

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """``dataset`` whose items are ``(*item, index)``: ``(x, y)`` becomes ``(x, y, index)``.

    Methods with a buffer per training example (temporal ensembling) read the index from the batch,
    so that the buffer follows each example under shuffling and distributed sampling.

    Args:
        dataset: a map-style data set of ``(x, y)`` items.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[Any, ...]:
        return (*self.dataset[index], index)


def with_example_indices(datamodule: Any) -> int:
    """Make the training loader of ``datamodule`` (an
    :class:`~lit_robust.data.AdversarialDataModule`, after its ``setup``) give example indices, by
    wrapping its ``train_set`` in :class:`IndexedDataset` (once); returns the number of training examples."""
    train_set = getattr(datamodule, "train_set", None)
    if train_set is None:
        raise RuntimeError("example indices need a data module of this library with its train_set set up "
                           f"(an AdversarialDataModule); got {type(datamodule).__name__}.")
    if not isinstance(train_set, IndexedDataset):
        datamodule.train_set = IndexedDataset(train_set)
    return len(datamodule.train_set)
