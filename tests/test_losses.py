"""Label smoothing and label noise against the paper's definitions (Stutz et al. 2021, supplement Sec. G)."""

import torch

from lit_robust.modules.losses import noisy_labels, smoothed_cross_entropy


def test_label_smoothing_target_distribution():
    torch.manual_seed(0)
    logits, y, tau, K = torch.randn(6, 10), torch.randint(0, 10, (6,)), 0.2, 10
    log_p = logits.log_softmax(1)
    expected = 0.0
    for i in range(6):  # p_y = 1 - tau, p_i = tau / (K - 1)
        for k in range(K):
            target = 1 - tau if k == y[i] else tau / (K - 1)
            expected -= target * log_p[i, k].item()
    assert torch.isclose(smoothed_cross_entropy(logits, y, tau), torch.tensor(expected / 6), atol=1e-5)
    # not PyTorch's variant, which puts tau / K on every class
    assert not torch.isclose(smoothed_cross_entropy(logits, y, tau),
                             torch.nn.functional.cross_entropy(logits, y, label_smoothing=tau), atol=1e-4)
    assert torch.isclose(smoothed_cross_entropy(logits, y, 0.0), torch.nn.functional.cross_entropy(logits, y))


def test_label_noise_fraction_and_uniformity():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(1000, dtype=torch.long)
    counts = torch.zeros(10)
    changed = 0
    for _ in range(20):
        noisy = noisy_labels(y, 0.3, 10, generator=g)
        changed += (noisy != y).sum().item()
        counts += torch.bincount(noisy, minlength=10)
    # a tau fraction is resampled uniformly over all K classes: P(changed) = tau (1 - 1/K)
    assert abs(changed / 20000 - 0.3 * 0.9) < 0.01
    # labels other than the true one are equally frequent
    others = counts[1:] / counts[1:].sum()
    assert (others - 1 / 9).abs().max() < 0.01
    assert torch.equal(noisy_labels(y, 0.0, 10), y)
