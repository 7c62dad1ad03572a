"""Loss landscapes (Stutz et al. 2021, supplement Sec. C) against direct evaluation, power iteration against explicit
Hessians (Table A; Singla et al. 2021, Fig. 3), and LandscapeMonitor's figures and scalars."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.func import functional_call

from lit_robust.attacks import PGD
from lit_robust.callbacks.landscape_monitor import LandscapeMonitor
from lit_robust.callbacks.metrics_file import MetricsFile
from lit_robust.measures.landscape import (
    Landscape,
    adversarial_directions,
    hessian_max_eigenvalue,
    input_hessian_max_eigenvalue,
    landscape_1d,
    landscape_2d,
    plot_landscapes,
    plot_surface,
    random_directions,
)
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT
from lit_robust.weights import names_and_weights


@pytest.fixture(scope="module")
def trained():
    from lit_robust.data import DigitsDataModule

    torch.manual_seed(0)
    x, y = DigitsDataModule.load()
    x, y = x[:48], y[:48]
    model = SmallCNN(width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(40):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for p in model.parameters():
        p.grad = None
    return model.eval(), x, y


def mean_loss_at(model, weights, direction, alpha, x, y) -> float:
    """The clean loss at w + alpha d on a copy of the model, written out."""
    copy = SmallCNN(width=4).eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for w, d in zip(names_and_weights(copy)[1], direction):
            w.add_(alpha * d)
        return F.cross_entropy(copy(x), y).item()


def test_random_directions_are_normalised_per_layer_or_filter(trained):
    model, _, _ = trained
    _, weights = names_and_weights(model)
    for direction in random_directions(weights, count=2, length=0.5):
        for d, w in zip(direction, weights):
            assert torch.allclose(d.norm(), 0.5 * w.detach().norm(), rtol=1e-5)
    (direction,) = random_directions(weights, count=1, length=0.5, normalization="filter")
    conv = direction[0]
    assert torch.allclose(conv.flatten(1).norm(dim=1), 0.5 * weights[0].detach().flatten(1).norm(dim=1), rtol=1e-5)


def test_1d_landscape_equals_direct_evaluation(trained):
    model, x, y = trained
    _, weights = names_and_weights(model)
    directions = random_directions(weights, count=2, generator=torch.Generator().manual_seed(0))
    landscape = landscape_1d(model, x, y, directions, attack=None, steps=5)
    assert landscape.losses.shape == (2, 5)
    assert torch.allclose(landscape.alphas, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    for i, direction in enumerate(directions):
        for j, alpha in enumerate(landscape.alphas.tolist()):
            assert landscape.losses[i, j].item() == pytest.approx(mean_loss_at(model, weights, direction, alpha, x, y),
                                                                  abs=1e-5)
    assert torch.allclose(landscape.curve, landscape.losses.mean(dim=0))
    # the minimum found by training lies at alpha = 0, and the loss rises on both sides
    assert landscape.curve[2] < landscape.curve[0] and landscape.curve[2] < landscape.curve[-1]


def test_rloss_landscape_batched_equals_sequential_and_exceeds_loss(trained):
    model, x, y = trained
    _, weights = names_and_weights(model)
    directions = random_directions(weights, count=1, generator=torch.Generator().manual_seed(1))
    attack = PGD(0.1, 0.025, 3, random_start=False)
    sequential = landscape_1d(model, x, y, directions, attack, steps=3, parallel=1)
    batched = landscape_1d(model, x, y, directions, attack, steps=3, parallel=3)
    assert torch.allclose(sequential.losses, batched.losses, atol=1e-5)
    clean = landscape_1d(model, x, y, directions, None, steps=3)
    assert (batched.losses > clean.losses).all()  # RLoss is an upper bound of Loss
    surface = landscape_2d(model, x, y, directions[0], directions[0], None, steps=3)
    # along (alpha, beta) with equal directions the point is w + (alpha + beta) d
    assert surface[0, 2].item() == pytest.approx(surface[1, 1].item(), abs=1e-5)
    assert surface[2, 2].item() == pytest.approx(mean_loss_at(model, weights, directions[0], 2.0, x, y), abs=1e-5)


def test_adversarial_directions_rise_faster_than_random_ones(trained):
    model, x, y = trained
    _, weights = names_and_weights(model)
    adversarial = adversarial_directions(model, x, y, attack=None, count=2, length=0.025, iterations=5,
                                         generator=torch.Generator().manual_seed(0))
    for direction in adversarial:
        for d, w in zip(direction, weights):
            assert torch.allclose(d.norm(), 0.025 * w.detach().norm(), rtol=1e-4)
    random = random_directions(weights, count=4, length=0.025, generator=torch.Generator().manual_seed(0))
    up = landscape_1d(model, x, y, adversarial, None, kind="adversarial", steps=3)
    level = landscape_1d(model, x, y, random, None, steps=3)
    assert torch.allclose(up.curve, up.losses.amax(dim=0))
    assert up.curve[-1] - up.curve[1] > 3 * abs(level.curve[-1] - level.curve[1])


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x.flatten(1))))


def test_weight_hessian_power_iteration_matches_the_explicit_hessian():
    model = TinyMLP()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    names, weights = names_and_weights(model)
    shapes = [w.shape for w in weights]

    def loss(flat):
        parameters, offset = {}, 0
        for name, shape in zip(names, shapes):
            parameters[name] = flat[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(functional_call(model, parameters, (x,)), y)

    flat = torch.cat([w.detach().flatten() for w in weights]).double()
    model.double()
    x = x.double()
    hessian = torch.autograd.functional.hessian(loss, flat)
    values, vectors = torch.linalg.eigh(hessian)
    top = values.abs().argmax()
    found = hessian_max_eigenvalue(model, x, y, iterations=500, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert found.value == pytest.approx(values[top].item(), rel=1e-4)
    vector = torch.cat([v.flatten() for v in found.vector])
    assert abs(float(vector @ vectors[:, top])) > 0.999
    assert all(w.grad is None for w in weights)


def test_input_hessian_power_iteration_matches_the_explicit_hessian():
    model = TinyMLP().double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    found = input_hessian_max_eigenvalue(model, x, y, iterations=500, tol=1e-12,
                                         generator=torch.Generator().manual_seed(0))
    for b in range(4):
        hessian = torch.autograd.functional.hessian(lambda v: F.cross_entropy(model(v[None]), y[b:b + 1]), x[b])
        values = torch.linalg.eigvalsh(hessian)
        assert found[b].item() == pytest.approx(values[values.abs().argmax()].item(), rel=1e-4)


def test_figures():
    alphas = torch.linspace(-1, 1, 5)
    landscapes = [Landscape(alphas, torch.rand(3, 5), "random"), Landscape(alphas, torch.rand(2, 5), "adversarial")]
    figure = plot_landscapes(landscapes)
    assert len(figure.axes) == 2
    assert len(figure.axes[0].lines) == 4 and len(figure.axes[1].lines) == 3
    assert len(plot_surface(torch.rand(4, 4)).axes) == 2  # the plot and its colour bar


def test_landscape_monitor_writes_png_tensorboard_and_metrics(tmp_path, digits):
    monitor = LandscapeMonitor(kinds=("random", "adversarial", "hessian"), directions=2, steps=3, examples=16,
                               attack_steps=1, adversarial_iterations=2, surface=True, surface_steps=3,
                               hessian_iterations=5)
    torch.manual_seed(0)
    module = PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, test_steps=1, test_restarts=1,
                   test_on_train=False)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer = Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, inference_mode=False,
                      limit_test_batches=1, callbacks=[monitor, MetricsFile()])
    state = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.test(module, datamodule=digits, verbose=False)
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
    directory = logger.log_dir
    assert os.path.exists(os.path.join(directory, "landscapes", "test_epoch=0_1d.png"))
    assert os.path.exists(os.path.join(directory, "landscapes", "test_epoch=0_2d.png"))
    events = EventAccumulator(directory)
    events.Reload()
    assert {"landscape/1d_test", "landscape/2d_test"} <= set(events.Tags()["images"])
    metrics = json.loads(open(os.path.join(directory, "metrics.json")).read())
    assert metrics["flatness/lambda_max"] > 0
    assert "flatness/input_lambda_max" in metrics
