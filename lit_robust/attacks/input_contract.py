"""The input contract: images in [0, 1], normalised inside the model.

Every attack projects onto [0, 1] and measures epsilon in pixel units of [0, 1] images, so inputs outside
[0, 1] (normalised in the data transforms, or uint8 pixels) would be clipped silently and epsilon would mean
something else. Every attack checks its batch when it starts (a minimum and a maximum of the batch), and so do
the module's first training, validation and test batches.
"""

from typing import Sequence, Union

from torch import Tensor

from lit_robust.errors import check


def check_input_range(x: Union[Tensor, Sequence[Tensor]]) -> None:
    """Raise :class:`~lit_robust.errors.ConfigurationError` unless the images ``x`` (a tensor, or several views
    of a batch) are floating-point images in [0, 1]."""
    views = list(x) if isinstance(x, (list, tuple)) else [x]
    integers = sorted({str(v.dtype) for v in views if not v.is_floating_point()})
    low, high = min(float(v.min()) for v in views), max(float(v.max()) for v in views)
    shown = f"[{low:.4g}, {high:.4g}]" + (f" ({', '.join(integers)})" if integers else "")
    check(not integers and low >= 0 and high <= 1, "inputs", shown,
          "floating-point images in [0, 1]: models take [0, 1] images and normalise them inside the model "
          "(lit_robust.models.Normalize as its first layer), not in the data transforms; uint8 pixels are divided "
          "by 255 in the data module (its collate_fn or transforms)")
