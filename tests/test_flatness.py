"""Average- and worst-case flatness (Stutz et al. 2021, supplement Eq. 3-7): references written from the equations,
batched == sequential, the model left as it was, xi -> 0, worst >= average, scale invariance (Sec. E)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.errors import ConfigurationError
from lit_robust.measures import average_case_flatness, worst_case_flatness
from lit_robust.measures.flatness import FlatnessMeasures
from lit_robust.measures.landscape import hessian_max_eigenvalue
from lit_robust.models import SmallCNN
from lit_robust.weights import Neighbourhood, names_and_weights
from tests import helpers

EPSILON, STEP = 0.1, 0.025


def trained(model: nn.Module, x, y, steps: int = 40) -> nn.Module:
    return helpers.trained(model, x, y, steps=steps, lr=0.1)


@pytest.fixture(scope="module")
def setup():
    from lit_robust.data import DigitsDataModule

    torch.manual_seed(0)
    x, y = DigitsDataModule.load()
    x, y = x[:64], y[:64]
    model = trained(SmallCNN(width=4), x, y)
    return model, DataLoader(TensorDataset(x, y), batch_size=32), x, y


def cheap(**kwargs) -> FlatnessMeasures:
    settings = dict(epsilon=EPSILON, step_size=STEP, random_start=False, reference_pgd_steps=3,
                    reference_pgd_restarts=1, samples=3, average_pgd_steps=3, ascent_iterations=3, ascent_restarts=2)
    settings.update(kwargs)
    return FlatnessMeasures(**settings)


def test_average_case_clean_loss_matches_eq_3_by_hand(setup):
    model, batches, x, y = setup
    result = average_case_flatness(model, batches, xi=0.3, samples=4, loss="loss", max_examples=None,
                                   generator=torch.Generator().manual_seed(5))
    # reference: the same nu (same generator, drawn per batch), evaluated by copying w + nu into a clone
    _, weights = names_and_weights(model)
    neighbourhood = Neighbourhood(weights, 0.3)
    generator = torch.Generator().manual_seed(5)
    per_sample = torch.zeros(4)
    for xb, yb in batches:
        for k in range(4):
            nu = neighbourhood.sample(generator)
            clone = SmallCNN(width=4).eval()
            clone.load_state_dict(model.state_dict())
            with torch.no_grad():
                for w, n in zip(names_and_weights(clone)[1], nu):
                    w.add_(n)
                per_sample[k] += F.cross_entropy(clone(xb), yb, reduction="sum")
    per_sample /= len(y)
    with torch.no_grad():
        reference = F.cross_entropy(model(x), y).item()
    assert result.examples == 64
    assert result.reference == pytest.approx(reference, abs=1e-5)
    assert result.perturbed == pytest.approx(per_sample.mean().item(), abs=1e-4)
    assert result.flatness == pytest.approx(per_sample.mean().item() - reference, abs=1e-4)
    assert result.std == pytest.approx(per_sample.std(correction=0).item(), abs=1e-4)
    assert result.flatness > 0


def test_worst_case_one_step_matches_eq_6_by_hand(setup):
    model, _, x, y = setup
    batch = [(x, y)]
    result = worst_case_flatness(model, batch, xi=0.05, ascent_iterations=1, ascent_restarts=1, lr=0.01, loss="loss",
                                 parallel=1, generator=torch.Generator().manual_seed(3))
    _, weights = names_and_weights(model)
    neighbourhood = Neighbourhood(weights, 0.05)
    nu = neighbourhood.sample_inside(torch.Generator().manual_seed(3))
    clone = SmallCNN(width=4).eval()
    clone.load_state_dict(model.state_dict())
    clone_weights = names_and_weights(clone)[1]
    with torch.no_grad():
        for w, n in zip(clone_weights, nu):
            w.add_(n)
    grads = torch.autograd.grad(F.cross_entropy(clone(x), y, reduction="sum"), clone_weights)
    # Eq. 6 step normalised per layer as Eq. 2 (to ||w_l||), learning rate 0.01, then projected
    stepped = [n + 0.01 * g / g.norm() * w.detach().norm() for n, g, w in zip(nu, grads, weights)]
    projected = [s * min(1.0, float(0.05 * w.detach().norm() / s.norm())) for s, w in zip(stepped, weights)]
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        for w, n in zip(clone_weights, projected):
            w.add_(n)
        expected = F.cross_entropy(clone(x), y).item()
    assert result.perturbed == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("measure", ["avg_rloss", "worst_rloss", "avg_loss", "worst_loss"])
def test_batched_equals_sequential(setup, measure):
    model, batches, _, _ = setup
    results = [cheap(parallel=parallel)(model, batches, (measure,), generator=torch.Generator().manual_seed(0))[measure]
               for parallel in (1, 2, 10)]
    for other in results[1:]:
        assert other.perturbed == pytest.approx(results[0].perturbed, abs=1e-5)
        assert other.std == pytest.approx(results[0].std, abs=1e-5)
        assert other.reference == pytest.approx(results[0].reference, abs=1e-6)


def test_model_is_left_exactly_as_it_was(setup):
    model, batches, x, y = setup
    model.train()
    model.features[0][1].eval()  # a mixed mode, which must survive
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    try:
        for parallel in (1, 10):
            cheap(parallel=parallel, random_start=True)(model, batches)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN statistics too
        assert [m.training for m in model.modules()] == modes
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    finally:
        for p in model.parameters():
            p.grad = None
        model.eval()


def test_flatness_vanishes_as_xi_goes_to_zero(setup):
    model, batches, _, _ = setup
    results = cheap(average_xi=1e-7, worst_xi=1e-7)(model, batches)
    for name, result in results.items():
        assert abs(result.flatness) < 1e-4, name
    wider = cheap(average_xi=0.5, worst_xi=0.05, worst_lr=0.02)(model, batches)
    assert all(wider[name].flatness > 1e-2 for name in wider)


def test_worst_case_is_at_least_average_case_at_equal_xi(setup):
    model, batches, _, _ = setup
    results = cheap(average_xi=0.02, worst_xi=0.02, ascent_iterations=10, worst_lr=0.005)(model, batches)
    assert results["worst_rloss"].flatness >= results["avg_rloss"].flatness
    assert results["worst_loss"].flatness >= results["avg_loss"].flatness
    assert results["worst_loss"].flatness > 0


def test_first_examples_only_and_settings_checked(setup):
    model, batches, x, y = setup
    result = average_case_flatness(model, batches, samples=2, loss="loss", max_examples=40)
    assert result.examples == 40
    with pytest.raises(ConfigurationError, match="samples"):
        FlatnessMeasures(samples=0)
    with pytest.raises(ConfigurationError, match="measures"):
        cheap()(model, batches, ("sharpness",))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        cheap()(model, batches)


class ConvBNNet(nn.Module):
    """Convolutions with biases, each followed by batch normalisation, as the paper's ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def scaled(model: ConvBNNet, s: float) -> ConvBNNet:
    """Weights and biases of every convolution times s; the running statistics follow (Stutz et al. 2021,
    supplement Sec. E)."""
    copy = ConvBNNet()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for conv, bn in ((copy.conv1, copy.bn1), (copy.conv2, copy.bn2)):
            conv.weight.mul_(s)
            conv.bias.mul_(s)
            bn.running_mean.mul_(s)
            bn.running_var.mul_(s * s)
    return copy.eval()


def test_scale_invariance_of_flatness_but_not_of_lambda_max(setup):
    _, batches, x, y = setup
    torch.manual_seed(0)
    model = ConvBNNet()
    model.train()
    trained(model, x, y, steps=30)
    meter = cheap(random_start=True, samples=4, ascent_restarts=2)
    flatness, lambdas = {}, {}
    for s in (1.0, 0.5, 2.0):
        network = scaled(model, s)
        with torch.no_grad():
            assert torch.allclose(network(x), model(x), atol=1e-3)  # the prediction does not change
        torch.manual_seed(1)
        flatness[s] = meter(network, batches, generator=torch.Generator().manual_seed(1))
        lambdas[s] = hessian_max_eigenvalue(network, x, y, generator=torch.Generator().manual_seed(0)).value
    for s in (0.5, 2.0):
        for name, result in flatness[s].items():
            expected = flatness[1.0][name].flatness
            assert result.flatness == pytest.approx(expected, abs=2e-3 + 0.02 * abs(expected))
    assert lambdas[0.5] > 1.5 * lambdas[1.0]
    assert lambdas[2.0] < lambdas[1.0] / 1.5
