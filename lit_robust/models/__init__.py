"""Networks taking [0, 1] images (normalisation inside) and returning logits."""

from lit_robust.models.activations import ACTIVATIONS, LiSHT, PSwish, get_activation, max_curvature
from lit_robust.models.normalize import Normalize
from lit_robust.models.small_cnn import SmallCNN

__all__ = ["ACTIVATIONS", "LiSHT", "Normalize", "PSwish", "SmallCNN", "get_activation", "max_curvature"]
