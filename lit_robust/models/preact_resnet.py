"""Pre-activation ResNet-18 (He et al. 2016, "Identity mappings"), the network of Rice et al. 2020,
Yan et al. 2022 and Singla et al. 2021, for 32x32 images.

Each block applies batch normalisation and the activation before each convolution; the stem is a
bare 3x3 convolution and one batch normalisation + activation follows the last stage. 11.17M
parameters for 10 classes.
"""

from torch import Tensor, nn

from lit_robust.models.activations import get_activation
from lit_robust.models.resnet import Activation, ResNet18


class PreActBlock(nn.Module):
    """BN, activation, 3x3 convolution, twice; the residual is added without a final activation.

    Where the shape changes the shortcut is a 1x1 convolution of the first activated input (no
    batch normalisation), as in the pre-activation ResNet and WideResNet. Dropout, where asked for,
    acts between the two convolutions, as in WideResNet.

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: stride of the first convolution.
        activation: a name of :func:`~lit_robust.models.activations.get_activation` or a class.
        activation_kwargs: the activation's parameters.
        dropout: dropout probability before the second convolution.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, activation: Activation,
                 activation_kwargs: dict, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = get_activation(activation, **activation_kwargs)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = get_activation(activation, **activation_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.dropout(self.act2(self.bn2(self.conv1(out)))))
        return out + shortcut


class PreActResNet18(ResNet18):
    """Pre-activation ResNet-18 for 32x32 inputs; the arguments are those of
    :class:`~lit_robust.models.resnet.ResNet18`."""

    block = PreActBlock
    preactivation = True
