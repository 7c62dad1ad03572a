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


class SmallDigitsNetwork(nn.Module):
    """The frame of the small digits networks: input normalisation, a feature extractor, dropout and a
    linear classifier; subclasses build the features with :meth:`block` and call :meth:`set_features`.

    Takes [0, 1] images (normalisation is the first layer) and returns logits. Checks the arguments the
    networks share, and the activation's name and parameters before any layer exists.
    """

    def __init__(self, num_classes: int, width: int, activation: Union[str, Type[nn.Module]],
                 activation_kwargs: Optional[dict], dropout: float, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        check(num_classes >= 2, "num_classes", num_classes, "an integer >= 2")
        self.num_classes = num_classes  # the output size, checked against the data module's
        check(width >= 1, "width", width, "an integer >= 1")
        check(0 <= dropout < 1, "dropout", dropout, "a probability in [0, 1)")
        self._activation = (activation, activation_kwargs or {})
        self.activation()  # fail early on a bad name, before any layer exists
        self.normalize = Normalize(mean, std)
        self.dropout = nn.Dropout(dropout)

    def activation(self) -> nn.Module:
        """A new activation layer of the network's kind."""
        activation, kwargs = self._activation
        return get_activation(activation, **kwargs)

    def block(self, in_channels: int, out_channels: int) -> nn.Sequential:
        """:func:`conv_block` with the network's activation."""
        activation, kwargs = self._activation
        return conv_block(in_channels, out_channels, activation, kwargs)

    def set_features(self, features: nn.Module, num_features: int) -> None:
        """The feature extractor (after normalisation) and the classifier on its ``num_features`` outputs."""
        self.features = features
        self.num_features = num_features
        self.classifier = nn.Linear(num_features, self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features, shape (B, num_features)."""
        return self.features(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


class SmallCNN(SmallDigitsNetwork):
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
        super().__init__(num_classes, width, activation, activation_kwargs, dropout, mean, std)
        self.set_features(nn.Sequential(
            self.block(in_channels, width), self.block(width, 2 * width), nn.MaxPool2d(2),
            self.block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4 * width)
