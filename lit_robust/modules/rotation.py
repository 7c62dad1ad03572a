"""Adversarial training with rotation prediction as self-supervision.

Hendrycks et al. 2019; Stutz et al. 2021, supplement Eq. 16.
"""

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_robust.errors import check
from lit_robust.modules.base import AdversarialModule, step_output

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


def rotate(x: Tensor, r: Tensor) -> Tensor:
    """rot(x, r): each image ``x[i]`` turned by ``r[i]`` * 90 degrees counter-clockwise.

    Args:
        x: square images, shape (B, C, H, H).
        r: rotations in {0, 1, 2, 3}, shape (B,).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation self-supervision needs square images, got {tuple(x.shape[-2:])}")
    rotated = x.clone()
    for k in range(1, ROTATIONS):
        chosen = r == k
        rotated[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    return rotated


def random_rotations(x: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Each image turned by a random multiple of 90 degrees, and the rotation labels y_r in {0, 1, 2, 3}."""
    y_r = torch.randint(ROTATIONS, (len(x),), generator=generator,
                        device="cpu" if generator is None else generator.device).to(x.device)
    return rotate(x, y_r), y_r


class RotationPredictor(nn.Module):
    """The rotation network: the model's penultimate features followed by the rotation head."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.model.forward_features(x))


class RotationSelfSupervised(AdversarialModule):
    """max_delta CE(f(x + delta), y) + lambda * max_delta CE(g(rot(x + delta, r)), y_r)
    (Hendrycks et al. 2019, "Using self-supervised learning can improve model robustness and
    uncertainty"; Stutz et al. 2021, supplement Eq. 16).

    As Stutz et al. 2021 describe it (supplement Sec. G), every batch is split in half: the first half keeps its
    images and labels, each image of the second half is rotated by one random r in {0, 90, 180, 270}
    degrees and labelled with y_r in {0, 1, 2, 3} (one rotation per image, not all four as in
    Hendrycks et al.). The rotation head g is ``nn.Linear(num_features, 4)`` on the network's
    ``forward_features``; it is trained with the network and not used for evaluation. PGD attacks
    the classifier on the first half and the rotation head on the second; rotating after or before
    the perturbation is the same, since a rotation only permutes pixels.

    The halves pass through the network separately (the classifier's head is the model's own), so
    batch normalisation normalises each half with its own statistics.

    Per training step with PGD-K: K forward and K input-only backward passes on each half, then one
    forward pass of each half and one full backward pass: in whole-batch passes, as PGD-K AT (PGD-7:
    8 forward, 7 input-only backward, 1 full backward).

    Args:
        lam: weight lambda of the rotation loss (0.5, 1, 2, 4 or 8 in Stutz et al. 2021).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments; the model must
            have ``forward_features`` and ``num_features``.
    """

    def __init__(self, *args: Any, lam: float = 4.0, **kwargs: Any) -> None:
        check(lam >= 0, "lam", lam, "a number >= 0 (the paper uses 0.5, 1, 2, 4 or 8)")
        super().__init__(*args, **kwargs)
        check(hasattr(self.model, "forward_features") and isinstance(getattr(self.model, "num_features", None), int),
              "model", type(self.model).__name__, "a network with forward_features(x) and num_features, "
              "for the rotation head (as every network of lit_robust.models)")
        self.rotation_head = nn.Linear(self.model.num_features, ROTATIONS)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        half = (len(x) + 1) // 2
        x_rot, y_rot = random_rotations(x[half:])
        rotation_net = RotationPredictor(self.model, self.rotation_head)
        # inner maximisation: against the labels on the first half, the rotation labels on the second
        x_adv = self.train_attack(self.model, x[:half], y[:half])
        x_rot_adv = self.train_attack(rotation_net, x_rot, y_rot)
        # outer minimisation (Eq. 16): CE + lambda * CE_rot
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y[:half])
        if len(x_rot):
            loss = loss + self.hparams.lam * F.cross_entropy(rotation_net(x_rot_adv), y_rot)
        return step_output(loss, logits, y[:half])
