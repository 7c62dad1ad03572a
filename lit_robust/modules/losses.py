"""Outer losses of adversarial training written from the papers' definitions (Stutz et al. 2021, supplement Sec. G)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_robust.attacks import per_example_loss


def smoothed_cross_entropy(logits: Tensor, y: Tensor, tau: float) -> Tensor:
    """Cross-entropy against the smoothed target p_y = 1 - tau, p_i = tau / (K - 1) for i != y.

    This is the paper's label smoothing (Stutz et al. 2021, supplement Sec. G), which puts no mass tau / K back on
    the true class, unlike ``F.cross_entropy(label_smoothing=tau)``. Mean over the batch.
    """
    num_classes = logits.shape[1]
    target = torch.full_like(logits, tau / (num_classes - 1), dtype=torch.float32)
    target.scatter_(1, y.view(-1, 1), 1.0 - tau)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def noisy_labels(y: Tensor, tau: float, num_classes: int, generator: torch.Generator = None) -> Tensor:
    """Labels where a fraction ``tau`` of the batch (round(tau * B) examples) is replaced by labels
    drawn uniformly from all ``num_classes`` classes (Stutz et al. 2021, supplement Sec. G, "label noise")."""
    count = int(round(tau * len(y)))
    noisy = y.clone()
    if count > 0:
        chosen = torch.randperm(len(y), generator=generator, device="cpu")[:count].to(y.device)
        noisy[chosen] = torch.randint(num_classes, (count,), generator=generator, device="cpu").to(y.device)
    return noisy


def trades_loss(clean_logits: Tensor, adversarial_logits: Tensor, y: Tensor, lam: float) -> Tensor:
    """TRADES' outer objective (Stutz et al. 2021, supplement Eq. 13), mean over the batch:

        CE(f(x), y) + lam * KL(f(x) || f(x_adv)),  KL(p || q) = sum_k p_k (log p_k - log q_k).

    Gradients flow through both distributions, as in the official implementation.

    Args:
        clean_logits: f(x), shape (B, K).
        adversarial_logits: f(x_adv), shape (B, K).
        y: labels, shape (B,).
        lam: weight lambda of the KL term (1, 3, 6 or 9 in the paper; 6 commonly).
    """
    kl = per_example_loss(adversarial_logits, y, "kl", clean_logits)
    return F.cross_entropy(clean_logits.float(), y) + lam * kl.mean()


def mart_binary_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """MART's binary cross-entropy (Stutz et al. 2021, supplement Eq. 14), one value per example:

        -log f_y(x) - log(1 - max_{y' != y} f_{y'}(x)).

    log(1 - f_k) is computed as logsumexp over the other classes minus logsumexp over all, which
    is exact where the official code adds the constants 1.0001 and 1e-12 inside the logarithm.

    Args:
        logits: f(x), shape (B, K) (MART applies it to the adversarial examples).
        y: labels, shape (B,).
    """
    logits = logits.float()
    true_class = F.one_hot(y, logits.shape[1]).bool()
    log_normaliser = logits.logsumexp(dim=1)
    runner_up = logits.masked_fill(true_class, float("-inf")).argmax(dim=1)
    runner_up_class = F.one_hot(runner_up, logits.shape[1]).bool()
    log_not_runner_up = logits.masked_fill(runner_up_class, float("-inf")).logsumexp(dim=1) - log_normaliser
    return F.cross_entropy(logits, y, reduction="none") - log_not_runner_up


def mart_loss(clean_logits: Tensor, adversarial_logits: Tensor, y: Tensor, lam: float) -> Tensor:
    """MART's outer objective (Stutz et al. 2021, supplement Eq. 15), mean over the batch:

        BCE(f(x_adv), y) + lam * KL(f(x) || f(x_adv)) * (1 - f_y(x)).

    The KL term points from the clean to the adversarial distribution, as in Eq. 15 and the official
    code; the confidence weight 1 - f_y(x) is not detached (the paper says nothing, the official
    code lets gradients through it).

    Args:
        clean_logits: f(x), shape (B, K).
        adversarial_logits: f(x_adv), shape (B, K).
        y: labels, shape (B,).
        lam: weight lambda of the KL term (1, 3, 6 or 9 in the paper).
    """
    kl = per_example_loss(adversarial_logits, y, "kl", clean_logits)
    p_true = F.softmax(clean_logits.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    return (mart_binary_cross_entropy(adversarial_logits, y) + lam * kl * (1.0 - p_true)).mean()


def jensen_shannon(logits_1: Tensor, logits_2: Tensor, temperature: float = 1.0) -> Tensor:
    """The Jensen-Shannon divergence between two temperature-scaled predictions, mean over the batch
    (Tack et al. 2022, "Consistency regularization for adversarial robustness", the consistency loss):

        JS(p_1, p_2) = (KL(p_1 || m) + KL(p_2 || m)) / 2,  p_i = softmax(z_i / T),  m = (p_1 + p_2) / 2.

    log m is computed as a log-sum-exp of log p_1 and log p_2, which is exact where the official code
    clamps m at 1e-8 before the logarithm. Gradients flow through both predictions.

    Args:
        logits_1: f(x_1), shape (B, K).
        logits_2: f(x_2), shape (B, K).
        temperature: T (0.5 in the official code).
    """
    log_p_1 = F.log_softmax(logits_1.float() / temperature, dim=1)
    log_p_2 = F.log_softmax(logits_2.float() / temperature, dim=1)
    log_m = torch.logaddexp(log_p_1, log_p_2) - math.log(2.0)
    kl_1 = (log_p_1.exp() * (log_p_1 - log_m)).sum(dim=1)
    kl_2 = (log_p_2.exp() * (log_p_2 - log_m)).sum(dim=1)
    return 0.5 * (kl_1 + kl_2).mean()
