"""ResNet-18 for 32x32 images (He et al. 2016), the paper's network (Stutz et al. 2021, supplement Sec. F).

The CIFAR version: a 3x3 convolution with stride 1 as the stem and no max-pooling, four stages of
two basic blocks with 64, 128, 256 and 512 channels (strides 1, 2, 2, 2), global average pooling
and a linear classifier; 11.17M parameters for 10 classes. :class:`ResNet` is the general network
(any block, any number of blocks per stage, post- or pre-activation) that :class:`ResNet18`,
:class:`~lit_robust.models.preact_resnet.PreActResNet18` and
:class:`~lit_robust.models.wide_resnet.WideResNet` fix.
"""

from typing import Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from lit_robust.errors import check
from lit_robust.models.activations import get_activation
from lit_robust.models.normalize import Normalize

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

Activation = Union[str, Type[nn.Module]]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch normalisation, activation after the residual sum.

    The shortcut is a 1x1 convolution with batch normalisation where the shape changes. Dropout,
    where asked for, follows the second convolution, as in the paper's official code (the paper
    names "Dropout" in Table D without saying where).

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: stride of the first convolution (2 halves the resolution).
        activation: a name of :func:`~lit_robust.models.activations.get_activation` or a class.
        activation_kwargs: the activation's parameters.
        dropout: dropout probability after the second convolution.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, activation: Activation,
                 activation_kwargs: dict, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = get_activation(activation, **activation_kwargs)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))
        self.act2 = get_activation(activation, **activation_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.dropout(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A residual network for small images: stem, stages of blocks, pooling, classifier.

    Takes [0, 1] images (normalisation is the first layer) and returns logits. Stage i has
    ``width * 2**i`` channels; every stage but the first halves the resolution in its first block.

    Args:
        block: the residual block class, called as ``block(in_channels, channels, stride,
            activation, activation_kwargs, dropout)``.
        num_blocks: blocks per stage.
        num_classes: number of classes.
        in_channels: channels of the input images.
        width: channels of the first stage.
        stem_width: channels of the stem convolution (default ``width``).
        preactivation: pre-activation blocks (He et al. 2016b): the stem is a bare convolution and
            batch normalisation + activation follow the last stage; otherwise the stem has them.
        activation: a name of :func:`~lit_robust.models.activations.get_activation` or a class.
        activation_kwargs: the activation's parameters (e.g. ``{"beta": 2.0}`` for pswish).
        dropout: dropout probability inside every residual block (where, the block says).
        channels_last: keep the weights and the activations in channels-last memory format, which
            tensor cores (and bf16 on recent CPUs) run faster.
        mean: per-channel input mean for normalisation.
        std: per-channel input standard deviation.
    """

    def __init__(self, block: Type[nn.Module], num_blocks: Sequence[int], num_classes: int = 10,
                 in_channels: int = 3, width: int = 64, stem_width: Optional[int] = None,
                 preactivation: bool = False, activation: Activation = "relu",
                 activation_kwargs: Optional[dict] = None, dropout: float = 0.0, channels_last: bool = False,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> None:
        super().__init__()
        check(num_classes >= 2, "num_classes", num_classes, "an integer >= 2")
        self.num_classes = num_classes  # the output size, checked against the data module's
        check(width >= 1, "width", width, "an integer >= 1")
        check(0 <= dropout < 1, "dropout", dropout, "a probability in [0, 1)")
        check(len(mean) == in_channels and len(std) == in_channels, "mean/std", (mean, std),
              f"one value per input channel ({in_channels})")
        kwargs = dict(activation_kwargs or {})
        get_activation(activation, **kwargs)  # fail early on a bad name, before any layer exists
        self.normalize = Normalize(mean, std)
        channels = stem_width or width
        stem = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        if not preactivation:
            stem += [nn.BatchNorm2d(channels), get_activation(activation, **kwargs)]
        self.stem = nn.Sequential(*stem)
        stages = []
        for i, count in enumerate(num_blocks):
            out_channels = width * 2 ** i
            for j in range(count):
                stages.append(block(channels, out_channels, 2 if (i > 0 and j == 0) else 1, activation, kwargs,
                                    dropout))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.head = nn.Identity()
        if preactivation:
            self.head = nn.Sequential(nn.BatchNorm2d(channels), get_activation(activation, **kwargs))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features, shape (B, num_features)."""
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.head(self.stages(self.stem(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


class ResNet18(ResNet):
    """ResNet-18 for 32x32 inputs, the paper's network (Stutz et al. 2021, supplement Sec. F); 11.17M parameters.

    The stem is a 3x3 convolution with stride 1 and no max-pooling, as every CIFAR ResNet-18
    (the ImageNet stem would reduce 32x32 images to 8x8 before the first stage).

    Args:
        num_classes: number of classes.
        in_channels: channels of the input images.
        width: channels of the first stage (64; smaller values give a narrower network).
        activation: a name of :func:`~lit_robust.models.activations.get_activation` or a class.
        activation_kwargs: the activation's parameters (e.g. ``{"slope": 0.2}`` for leaky_relu).
        dropout: dropout probability inside every residual block (0.1 in the paper's official code
            for the "Dropout" row of Table D).
        channels_last: channels-last memory format for weights and activations.
        mean: per-channel input mean (default CIFAR-10's).
        std: per-channel input standard deviation (default CIFAR-10's).
    """

    block: Type[nn.Module] = BasicBlock
    preactivation = False

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64,
                 activation: Activation = "relu", activation_kwargs: Optional[dict] = None, dropout: float = 0.0,
                 channels_last: bool = False, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD) -> None:
        super().__init__(self.block, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                         width=width, preactivation=self.preactivation, activation=activation,
                         activation_kwargs=activation_kwargs, dropout=dropout, channels_last=channels_last,
                         mean=mean, std=std)
