"""Training-time data augmentation: random crop and flip, AutoAugment, Cutout (Stutz et al. 2021, supplement Sec. F, G).

The standard augmentation of the paper is a random crop with up to 4 pixels of (zero) padding per
side and a random horizontal flip. "AutoAugment" (Stutz et al. 2021, supplement Sec. G) adds, on top of it,
AutoAugment with the CIFAR-10 policy found by Cubuk et al. (torchvision's implementation) and
Cutout (DeVries and Taylor) with 16x16 patches, in that order. Evaluation loaders use none of
these: images are only converted to [0, 1] tensors.
"""

from typing import Callable, Sequence

import torch
from torch import Tensor
from torchvision import transforms

from lit_robust.errors import check


class Cutout:
    """Cover one ``size`` x ``size`` square of an image tensor with ``fill`` (DeVries and Taylor 2017).

    The square's centre is uniform over the image, so the square may lie partly outside it and
    then covers less. The official implementation zeroes a normalised image, i.e. fills with the
    data set's mean; here normalisation happens inside the model, so the fill is the mean itself.

    Args:
        size: side length of the square in pixels.
        fill: per-channel value of the covered pixels, in [0, 1].
    """

    def __init__(self, size: int, fill: Sequence[float]) -> None:
        check(size >= 1, "cutout_size", size, "an integer >= 1")
        self.size = size
        self.fill = torch.tensor(list(fill), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        cy, cx = torch.randint(height, (1,)).item(), torch.randint(width, (1,)).item()
        top, left = max(0, cy - self.size // 2), max(0, cx - self.size // 2)
        bottom, right = min(height, cy - self.size // 2 + self.size), min(width, cx - self.size // 2 + self.size)
        image = image.clone()
        image[:, top:bottom, left:right] = self.fill.to(image.dtype)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, fill={self.fill.flatten().tolist()})"


def train_transform(image_size: int, crop_padding: int = 4, flip: bool = True, autoaugment: bool = False,
                    cutout_size: int = 0, fill: Sequence[float] = (0.5, 0.5, 0.5)) -> Callable:
    """The training transform of a PIL image to a [0, 1] tensor.

    Args:
        image_size: side length of the (square) images.
        crop_padding: random crop with this much zero padding per side (0: no crop).
        flip: random horizontal flip.
        autoaugment: AutoAugment with torchvision's CIFAR-10 policy, after crop and flip.
        cutout_size: side of the Cutout square (0: no Cutout), after everything else.
        fill: per-channel Cutout fill (the data set's mean).
    """
    steps = []
    if crop_padding > 0:
        steps.append(transforms.RandomCrop(image_size, padding=crop_padding))
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    if autoaugment:
        steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10))
    steps.append(transforms.ToTensor())
    if cutout_size > 0:
        steps.append(Cutout(cutout_size, fill))
    return transforms.Compose(steps)


def eval_transform() -> Callable:
    """Evaluation transform: a PIL image to a [0, 1] tensor, nothing else."""
    return transforms.ToTensor()
