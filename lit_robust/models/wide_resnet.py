"""WideResNet (Zagoruyko and Komodakis 2016), WRN-28-10 and WRN-34-10 for 32x32 images.

A bare 3x3 convolution with 16 channels, three stages of (depth - 4) / 6 pre-activation blocks
with 16k, 32k and 64k channels (k the widening factor; strides 1, 2, 2), batch normalisation +
activation, global average pooling and a linear classifier. WRN-34-10 has 46.2M parameters,
WRN-28-10 36.5M (10 classes). ``dropout`` acts between the two convolutions of each block, as in
the original.
"""

from typing import Optional, Sequence

from lit_robust.errors import check
from lit_robust.models.preact_resnet import PreActBlock
from lit_robust.models.resnet import CIFAR10_MEAN, CIFAR10_STD, Activation, ResNet


class WideResNet(ResNet):
    """WRN-depth-widen_factor; takes [0, 1] images and returns logits.

    Args:
        depth: number of layers, 6n + 4 (28 and 34 in Yan et al. 2022 and Singla et al. 2021).
        widen_factor: the widening factor k (10).
        num_classes: number of classes.
        in_channels: channels of the input images.
        activation: a name of :func:`~lit_robust.models.activations.get_activation` or a class.
        activation_kwargs: the activation's parameters.
        dropout: dropout probability between the two convolutions of every block.
        channels_last: channels-last memory format for weights and activations.
        mean: per-channel input mean (default CIFAR-10's).
        std: per-channel input standard deviation (default CIFAR-10's).
    """

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3,
                 activation: Activation = "relu", activation_kwargs: Optional[dict] = None, dropout: float = 0.0,
                 channels_last: bool = False, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD) -> None:
        check(depth >= 10 and (depth - 4) % 6 == 0, "depth", depth, "6n + 4 for an integer n >= 1 (e.g. 28, 34)")
        check(widen_factor >= 1, "widen_factor", widen_factor, "an integer >= 1")
        blocks = (depth - 4) // 6
        super().__init__(PreActBlock, (blocks, blocks, blocks), num_classes=num_classes, in_channels=in_channels,
                         width=16 * widen_factor, stem_width=16, preactivation=True, activation=activation,
                         activation_kwargs=activation_kwargs, dropout=dropout, channels_last=channels_last,
                         mean=mean, std=std)
