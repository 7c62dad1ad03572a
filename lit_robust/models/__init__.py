"""Networks taking [0, 1] images (normalisation inside) and returning logits."""

from lit_robust.models.activations import ACTIVATIONS, LiSHT, PSwish, get_activation, max_curvature
from lit_robust.models.normalize import Normalize
from lit_robust.models.preact_resnet import PreActResNet18
from lit_robust.models.resnet import ResNet, ResNet18
from lit_robust.models.small_cnn import SmallCNN
from lit_robust.models.small_cnn_fc import SmallCNNFC
from lit_robust.models.wide_resnet import WideResNet

__all__ = ["ACTIVATIONS", "LiSHT", "Normalize", "PSwish", "PreActResNet18", "ResNet", "ResNet18", "SmallCNN",
           "SmallCNNFC", "WideResNet", "get_activation", "max_curvature"]
