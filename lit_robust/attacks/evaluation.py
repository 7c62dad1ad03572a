"""Clean, PGD and AutoAttack evaluation of a model, per batch and over a data set.

Errors are fractions in [0, 1]; robust error (RErr) counts examples that are misclassified or
successfully attacked (Stutz et al. 2021, supplement Sec. F). Robust loss (RLoss) is the cross-entropy at the
worst-case PGD example; AutoAttack stops once an example is broken, so it gives RErr only.
"""

import logging
import time
from typing import Dict, Iterable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from lit_robust.attacks import PGD, restore_modes
from lit_robust.attacks.input_contract import check_input_range
from lit_robust.attacks.sanity import check_gradient_masking
from lit_robust.data.batches import DEFAULT_BATCH_KEYS, inputs_and_targets

log = logging.getLogger(__name__)

AutoAttackVersion = Literal["standard", "plus", "rand"]


def clean_and_robust(model: nn.Module, x: Tensor, y: Tensor, attack: PGD) -> Dict[str, Tensor]:
    """Per-example ``err``, ``loss`` (clean) and ``rerr``, ``rloss`` (under ``attack``) on one batch.

    The model is evaluated in whatever mode it is in; the attack uses its own BN mode.

    Raises:
        ConfigurationError: when ``x`` is not in [0, 1] (the input contract, checked once by the attack).
    """
    with torch.no_grad():
        logits = model(x)
    adversarial = attack.run(model, x, y)
    wrong = logits.argmax(dim=1) != y
    return {
        "err": wrong.float(),
        "loss": F.cross_entropy(logits.float(), y, reduction="none"),
        "rerr": (wrong | (adversarial.logits.argmax(dim=1) != y)).float(),
        "rloss": adversarial.loss,
    }


def autoattack_wrong(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, norm: str = "linf",
                     version: AutoAttackVersion = "standard", seed: Optional[int] = 0,
                     batch_size: Optional[int] = None) -> Tensor:
    """Per example, whether the official AutoAttack (pyautoattack) finds it misclassified or breaks it.

    Runs in eval mode and restores the model's modes afterwards. The examples go through AutoAttack
    in batches of ``batch_size`` (default: all at once); after each batch the progress is logged on
    rank zero, as AutoAttack takes minutes per thousand CIFAR images even on a GPU. Autocast is
    switched off inside: under ``bf16-mixed`` AutoAttack evaluates the (fp32) weights in fp32, so the
    reported robust error does not depend on the training precision.
    """
    from pyautoattack import AutoAttack

    check_input_range(x)
    attack = AutoAttack(model, eps=epsilon, norm={"linf": "Linf", "l2": "L2"}[norm], version=version,
                        device=x.device, seed=seed)
    size = batch_size or len(x)
    wrong, start = [], time.perf_counter()
    with restore_modes(model, False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        for first in range(0, len(x), size):
            _, predicted = attack.run_standard_evaluation(x[first:first + size], y[first:first + size],
                                                          batch_size=size)
            wrong.append(predicted.to(y.device) != y[first:first + size])
            done = first + len(wrong[-1])
            rank_zero_info(f"AutoAttack ({version}): {done}/{len(x)} examples, "
                           f"{int(torch.cat(wrong).sum())} misclassified or broken, "
                           f"{time.perf_counter() - start:.1f} s")
    return torch.cat(wrong)




def evaluate(model: nn.Module, batches: Iterable, attack: PGD, device: torch.device,
             sanity_checks: bool = False, keys: Sequence[str] = DEFAULT_BATCH_KEYS) -> Dict[str, Tensor]:
    """Sums of the per-example values of :func:`clean_and_robust` over ``batches``, and ``count``.

    Sums (not means) so that shares of several processes can be added before dividing. With
    ``sanity_checks`` the first batch also goes through
    :func:`~lit_robust.attacks.sanity.check_gradient_masking` (warnings on gradient masking).

    Args:
        model: the network, taking [0, 1] images and returning logits.
        batches: batches as a loader yields them (the batch contract of :mod:`lit_robust.data.batches`).
        attack: the attack.
        device: where to evaluate.
        sanity_checks: run the gradient-masking checks on the first batch.
        keys: the keys of the inputs and labels in dict batches.
    """
    totals: Dict[str, Tensor] = {}
    for index, batch in enumerate(batches):
        x, y = inputs_and_targets(batch, keys)
        x, y = x.to(device), y.to(device)
        if sanity_checks and index == 0:
            check_gradient_masking(model, x, y)
        for name, values in clean_and_robust(model, x, y, attack).items():
            totals[name] = totals.get(name, 0) + values.sum()
        totals["count"] = totals.get("count", 0) + torch.tensor(float(len(y)), device=device)
    return totals

