"""Several independently augmented views of every training image (consistency regularisation, Tack et al. 2022)."""

from typing import Tuple

from torch import Tensor
from torch.utils.data import Dataset


class AugmentedViews(Dataset):
    """Item i of ``dataset`` drawn ``views`` times: ``((x_1, ..., x_views), y)``.

    ``dataset`` draws its random augmentation anew on every access (the training sets of this
    package do), so the views are independent augmentations of the same image; with no augmentation
    they are equal. Default collation turns a batch into ``([X_1, ..., X_views], Y)``.

    Args:
        dataset: a training set whose items are ``(image, label)``.
        views: number of views per image (2 for consistency regularisation).
    """

    def __init__(self, dataset: Dataset, views: int = 2) -> None:
        self.dataset, self.views = dataset, views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[Tuple[Tensor, ...], Tensor]:
        items = [self.dataset[index] for _ in range(self.views)]
        return tuple(image for image, _ in items), items[0][1]
