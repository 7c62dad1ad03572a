"""A small convolutional network with a fully connected head for 8x8 inputs (the embedded digits data set)."""

from typing import Optional, Sequence, Type, Union

from torch import nn

from lit_robust.errors import check
from lit_robust.models.small_cnn import DIGITS_MEAN, DIGITS_STD, SmallDigitsNetwork


class SmallCNNFC(SmallDigitsNetwork):
    """Two 3x3 conv + batch-norm + activation blocks, one 2x2 max-pool, flatten, two fully connected layers.

    Unlike :class:`~lit_robust.models.small_cnn.SmallCNN` (global average pooling), the flattened
    feature map (``2 * width * (H / 2) * (W / 2)`` numbers, 1024 for 8x8 digits) feeds a hidden
    fully connected layer; with its many weights the network can memorise adversarial examples of
    the training set, so PGD adversarial training on the digits overfits robustly (the held-out
    robust loss rises after the learning-rate drop while the training robust loss keeps falling).
    Takes [0, 1] images (normalisation is the first layer) and returns logits.

    Args:
        num_classes: number of classes.
        in_channels: channels of the input images.
        image_size: height and width of the input images (even).
        width: channels of the first block; the second has 2x.
        hidden: units of the hidden fully connected layer (``num_features``).
        activation: a name of :func:`~lit_robust.models.activations.get_activation` or a class.
        activation_kwargs: the activation's parameters (e.g. ``{"beta": 2.0}`` for pswish).
        dropout: dropout probability before the classifier.
        mean: per-channel input mean for normalisation.
        std: per-channel input standard deviation.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, width: int = 32,
                 hidden: int = 256, activation: Union[str, Type[nn.Module]] = "relu",
                 activation_kwargs: Optional[dict] = None, dropout: float = 0.0,
                 mean: Sequence[float] = DIGITS_MEAN, std: Sequence[float] = DIGITS_STD) -> None:
        super().__init__(num_classes, width, activation, activation_kwargs, dropout, mean, std)
        check(image_size >= 2 and image_size % 2 == 0, "image_size", image_size, "an even integer >= 2")
        check(hidden >= 1, "hidden", hidden, "an integer >= 1")
        flat = 2 * width * (image_size // 2) ** 2
        self.set_features(nn.Sequential(
            self.block(in_channels, width), self.block(width, 2 * width), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(flat, hidden), self.activation()), hidden)
