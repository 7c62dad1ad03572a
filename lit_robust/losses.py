"""Outer losses of adversarial training written from the papers' definitions (papers/001 Sec. G)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def smoothed_cross_entropy(logits: Tensor, y: Tensor, tau: float) -> Tensor:
    """Cross-entropy against the smoothed target p_y = 1 - tau, p_i = tau / (K - 1) for i != y.

    This is the paper's label smoothing (papers/001 Sec. G), which puts no mass tau / K back on
    the true class, unlike ``F.cross_entropy(label_smoothing=tau)``. Mean over the batch.
    """
    num_classes = logits.shape[1]
    target = torch.full_like(logits, tau / (num_classes - 1), dtype=torch.float32)
    target.scatter_(1, y.view(-1, 1), 1.0 - tau)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def noisy_labels(y: Tensor, tau: float, num_classes: int, generator: torch.Generator = None) -> Tensor:
    """Labels where a fraction ``tau`` of the batch (round(tau * B) examples) is replaced by labels
    drawn uniformly from all ``num_classes`` classes (papers/001 Sec. G, "label noise")."""
    count = int(round(tau * len(y)))
    noisy = y.clone()
    if count > 0:
        chosen = torch.randperm(len(y), generator=generator, device="cpu")[:count].to(y.device)
        noisy[chosen] = torch.randint(num_classes, (count,), generator=generator, device="cpu").to(y.device)
    return noisy
