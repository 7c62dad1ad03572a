"""A small convolutional network for 8x8 inputs (the embedded digits data set)."""

from typing import Optional, Sequence, Type, Union

from torch import Tensor, nn

from lit_robust.errors import check
from lit_robust.models.activations import get_activation
from lit_robust.models.normalize import Normalize

DIGITS_MEAN = (0.3062,)
DIGITS_STD = (0.3779,)


def conv_block(in_channels: int, out_channels: int, activation: Union[str, Type[nn.Module]],
               activation_kwargs: dict) -> nn.Sequential:
    """3x3 convolution (no bias) + batch normalisation + activation, the block of the small digits networks."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         get_activation(activation, **activation_kwargs))


class SmallCNN(nn.Module):
    """Three 3x3 conv + batch-norm + activation blocks, one 2x2 max-pool, global average pooling.

    Takes [0, 1] images (normalisation is the first layer) and returns logits.

    Args:
        num_classes: number of classes.
        in_channels: channels of the input images.
        width: channels of the first block; the second and third have 2x and 4x.
        activation: a name of :func:`~lit_robust.models.activations.get_activation` or a class.
        activation_kwargs: the activation's parameters (e.g. ``{"beta": 2.0}`` for pswish).
        dropout: dropout probability before the classifier.
        mean: per-channel input mean for normalisation.
        std: per-channel input standard deviation.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 activation: Union[str, Type[nn.Module]] = "relu", activation_kwargs: Optional[dict] = None,
                 dropout: float = 0.0, mean: Sequence[float] = DIGITS_MEAN, std: Sequence[float] = DIGITS_STD) -> None:
        super().__init__()
        check(num_classes >= 2, "num_classes", num_classes, "an integer >= 2")
        self.num_classes = num_classes  # the output size, checked against the data module's
        check(width >= 1, "width", width, "an integer >= 1")
        check(0 <= dropout < 1, "dropout", dropout, "a probability in [0, 1)")
        kwargs = activation_kwargs or {}
        get_activation(activation, **kwargs)  # fail early on a bad name, before any layer exists

        def block(cin: int, cout: int) -> nn.Sequential:
            return conv_block(cin, cout, activation, kwargs)

        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            block(in_channels, width), block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = 4 * width
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features, shape (B, num_features)."""
        return self.features(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))
