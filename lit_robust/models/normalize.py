"""Input normalisation as a layer, so models take [0, 1] images and epsilon is in pixel units."""

from typing import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel standard deviation.

    Args:
        mean: per-channel mean of the training images in [0, 1].
        std: per-channel standard deviation.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
