"""PGD's properties (Stutz et al. 2021, supplement Sec. D, F): feasibility, restarts, strength, L2, modes, gradients."""

import pytest
import torch
import torch.nn.functional as F

from lit_robust.attacks import FGSM, PGD, per_example_loss, per_example_losses, restore_modes
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    # a few clean steps so that the loss surface is not flat around a random init
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_inside_ball_and_unit_box(model_and_batch, norm):
    model, x, y = model_and_batch
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = PGD(eps, eps / 4, 10, restarts=2, norm=norm)(model, x, y)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0.5 * eps).any()  # it did move


def test_l2_projection_and_normalised_steps():
    attack = PGD(0.5, 0.2, 1, norm="l2")
    x = torch.full((2, 1, 4, 4), 0.5)
    big = torch.randn(2, 1, 4, 4) * 10
    projected = attack.project(x, big)
    assert torch.allclose(projected.flatten(1).norm(dim=1), torch.full((2,), 0.5), atol=1e-5)
    assert torch.allclose(projected / projected.flatten(1).norm(dim=1).view(-1, 1, 1, 1),
                          big / big.flatten(1).norm(dim=1).view(-1, 1, 1, 1), atol=1e-5)
    small = torch.randn(2, 1, 4, 4) * 1e-3
    assert torch.equal(attack.project(x, small), (x + small).clamp(0, 1) - x)
    step = attack.ascent(torch.zeros_like(x), big)
    assert torch.allclose(step.flatten(1).norm(dim=1), torch.full((2,), 0.2), atol=1e-5)


def test_linf_step_is_signed_gradient():
    attack = PGD(0.1, 0.03, 1)
    grad = torch.tensor([[[[2.0, -0.5], [0.0, 1e-8]]]])
    assert torch.equal(attack.ascent(torch.zeros_like(grad), grad), 0.03 * grad.sign())


def test_restarts_never_weaker_than_one_run(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(1)
    single = PGD(0.1, 0.025, 5, restarts=1).run(model, x, y)
    torch.manual_seed(1)  # the first restart repeats the single run exactly
    several = PGD(0.1, 0.025, 5, restarts=4).run(model, x, y)
    assert (several.loss >= single.loss - 1e-6).all()
    assert several.loss.sum() > single.loss.sum()
    # the reported losses are those of the returned examples
    with torch.no_grad():
        assert torch.allclose(per_example_losses(model, several.x_adv, y), several.loss, atol=1e-5)


def test_keep_best_is_worst_iterate(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(2)
    best = PGD(0.1, 0.05, 6, keep_best=True).run(model, x, y)
    torch.manual_seed(2)
    last = PGD(0.1, 0.05, 6, keep_best=False).run(model, x, y)
    assert (best.loss >= last.loss - 1e-6).all()


def test_pgd_stronger_than_one_fgsm_step(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(3)
    pgd = PGD(0.1, 0.025, 10).run(model, x, y)
    fgsm_adv = FGSM(0.1)(model, x, y)
    assert pgd.loss.mean() > per_example_losses(model, fgsm_adv, y).mean()
    assert pgd.loss.mean() > per_example_losses(model, x, y).mean()


def test_mode_restored_and_weight_grads_untouched(model_and_batch):
    model, x, y = model_and_batch
    model.train()
    model.features[0].eval()  # a mixed state must come back as it was
    marker = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), marker):
        p.grad = g.clone()
    seen = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    PGD(0.1, 0.025, 3)(model, x, y)
    hook.remove()
    assert seen and not any(seen)  # attacked in eval mode
    assert model.training and not model.features[0].training and model.features[1].training
    for p, g in zip(model.parameters(), marker):
        assert torch.equal(p.grad, g)
    model.eval()
    for p in model.parameters():
        p.grad = None


def test_bn_train_mode_is_used_when_asked(model_and_batch):
    model, x, y = model_and_batch
    seen = []
    hook = model.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    with restore_modes(model, False):
        PGD(0.1, 0.025, 2, bn_mode="train")(model, x, y)
        assert not model.training
    hook.remove()
    assert all(seen)


def test_error_under_inference_mode(model_and_batch):
    model, x, y = model_and_batch
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        PGD(0.1, 0.025, 2)(model, x, y)


def test_attacks_and_measures_refuse_inference_mode_with_one_message_naming_what_needs_gradients(model_and_batch):
    from lit_robust.measures import HessianTrace

    model, x, y = model_and_batch
    with torch.inference_mode(), pytest.raises(RuntimeError) as attack:
        PGD(0.1, 0.025, 2)(model, x, y)
    with torch.inference_mode(), pytest.raises(RuntimeError) as measure:
        HessianTrace(loss="loss", samples=1, max_examples=4)(model, [(x, y)])
    remedy = "gradients are needed, but this ran under torch.inference_mode(); run the Trainer with inference_mode="
    assert str(attack.value).startswith("attacks: " + remedy)
    assert str(measure.value).startswith("hessian_trace_loss: " + remedy)


def test_works_under_no_grad(model_and_batch):
    model, x, y = model_and_batch
    with torch.no_grad():
        x_adv = PGD(0.1, 0.025, 3)(model, x, y)
    assert (x_adv != x).any()


def test_kl_objective_matches_definition():
    torch.manual_seed(0)
    clean, adv = torch.randn(5, 4), torch.randn(5, 4)
    p, q = clean.softmax(1), adv.softmax(1)
    reference = (p * (p.log() - q.log())).sum(1)
    assert torch.allclose(per_example_loss(adv, None, "kl", clean), reference, atol=1e-6)
    assert torch.allclose(per_example_loss(clean, None, "kl", clean), torch.zeros(5), atol=1e-6)


def test_kl_attack_increases_divergence(model_and_batch):
    model, x, y = model_and_batch
    attack = PGD(0.1, 0.025, 5, loss="kl", init_std=0.001, keep_best=False)
    x_adv = attack(model, x, y)
    with torch.no_grad():
        kl = per_example_loss(model(x_adv), y, "kl", model(x))
    assert kl.mean() > 1e-3
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("kwargs, setting", [
    (dict(epsilon=-0.1, step_size=0.01, steps=1), "epsilon"),
    (dict(epsilon=0.0, step_size=0.01, steps=1), "epsilon"),
    (dict(epsilon=0.1, step_size=0.01, steps=0), "steps"),
    (dict(epsilon=0.1, step_size=0.01, steps=1, norm="l3"), "norm"),
    (dict(epsilon=0.1, step_size=0.01, steps=1, restarts=0), "restarts"),
    (dict(epsilon=0.1, step_size=0.0, steps=1), "step_size"),
])
def test_bad_arguments_name_the_setting(kwargs, setting):
    with pytest.raises(ConfigurationError, match=rf"^{setting}=.* must be"):
        PGD(**kwargs)
