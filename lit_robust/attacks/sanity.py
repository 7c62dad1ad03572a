"""Warnings for symptoms of gradient masking, in the spirit of AutoAttack's checks (Croce and Hein 2020).

A robustness evaluation by gradient-based attacks (PGD, APGD) is only as good as the input
gradients it follows. These checks look at one batch for three symptoms and warn (once per check,
on rank zero) with a sentence on what to do:

- the outputs look like probabilities instead of logits (a softmax inside the model flattens
  the cross-entropy's gradients);
- some examples have an input gradient of exactly zero (attacks cannot move them);
- the outputs are random in evaluation mode (a randomised defence, or dropout left on).
"""

from typing import List

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_robust.attacks import restore_modes
from lit_robust.attacks.input_contract import check_input_range  # noqa: F401  (one import path for the checks)


def looks_like_probabilities(logits: Tensor, tolerance: float = 1e-3) -> bool:
    """Whether every row of ``logits`` lies in [0, 1] and sums to 1 (AutoAttack's ``check_range_output``)."""
    logits = logits.float()
    return bool(logits.min() > -tolerance and logits.max() < 1 + tolerance
                and ((logits.sum(dim=1) - 1).abs() < tolerance).all())


def zero_gradient_count(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """The number of examples whose input gradient of the cross-entropy is exactly zero."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x).float(), y, reduction="sum"), x)
    return int((grad.flatten(1).abs().sum(dim=1) == 0).sum())


def is_randomized(model: nn.Module, x: Tensor, repeats: int = 3, tolerance: float = 1e-4) -> bool:
    """Whether repeated forward passes give different (normalised) outputs (AutoAttack's ``check_randomized``)."""
    with torch.no_grad():
        outputs = [model(x).float() for _ in range(repeats)]
    outputs = [o / o.norm(dim=1, keepdim=True).clamp_min(1e-10) for o in outputs]
    return any((o - outputs[0]).norm(dim=1).max() > tolerance for o in outputs[1:])


def check_gradient_masking(model: nn.Module, x: Tensor, y: Tensor) -> List[str]:
    """Run the checks on the batch ``(x, y)`` in evaluation mode; warn about and return each finding.

    The model's train/eval modes are restored afterwards and no gradient is left in the weights.

    Args:
        model: the network, taking [0, 1] images and meant to return logits.
        x: a batch of inputs.
        y: their labels.
    """
    findings = []
    with restore_modes(model, False):
        with torch.no_grad():
            logits = model(x)
        if looks_like_probabilities(logits):
            findings.append(
                "The model's outputs look like probabilities (in [0, 1], rows summing to 1), not logits: "
                "a softmax inside the model flattens the gradients attacks follow, and the robust error is "
                "under-estimated. Remove the final softmax; losses and attacks here expect logits.")
        zeros = zero_gradient_count(model, x, y)
        if zeros > 0:
            findings.append(
                f"{zeros} of {len(y)} examples have an input gradient of exactly zero, so gradient-based "
                "attacks cannot move them (gradient masking). Look for saturated logits, rounding or other "
                "non-differentiable steps in forward, or detach(); trust AutoAttack's black-box Square "
                "attack (autoattack: true) over PGD for these models.")
        if is_randomized(model, x):
            findings.append(
                "The model's outputs change between forward passes in eval mode (a randomised defence or "
                "dropout left on): PGD and standard AutoAttack under-estimate the robust error. Make eval "
                "mode deterministic, or evaluate with expectation over transformation (autoattack_version: "
                "rand).")
    for message in findings:
        rank_zero_warn(message)
    return findings
