"""lambda_max of the Hessian of the mean loss over several batches against the exact Hessian's eigenvalues, and
the same measure by name from FlatnessMonitor."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_robust.callbacks import FlatnessMonitor, FlatnessSettings
from lit_robust.measures.hessian_max_eigenvalue import hessian_max_eigenvalue
from tests.test_measure_registry import EPSILON, STEP, Data, Own, measured_by
from tests.test_sharpness_measures import exact_hessian


def test_lambda_max_over_several_batches_is_the_exact_hessians_largest_eigenvalue():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Tanh(), nn.Linear(4, 3)).eval()
    names = [n for n, _ in model.named_parameters()]
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, x[:30], y[:30], names))
    largest = eigenvalues[eigenvalues.abs().argmax()]
    # three batches of 10 (the loader holds 40 examples; the first 30 are measured)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    result = hessian_max_eigenvalue(model, loader, loss="loss", iterations=2000, tol=1e-9, max_examples=30,
                                    generator=torch.Generator().manual_seed(0))
    assert result.examples == 30
    assert result.flatness == pytest.approx(float(largest), rel=1e-3)


def test_lambda_max_by_name_from_the_monitor():
    monitor = FlatnessMonitor(measures=["lambda_max_loss", "lambda_max_rloss"], batch_size=8, test_splits=("eval",),
                              test=FlatnessSettings(examples=16, pgd_steps=1), network="net", epsilon=EPSILON,
                              step_size=STEP)
    module = Own()
    measured_by(module, Data("float"), monitor)
    # the same as the function on the first 16 examples in batches of 8, with the monitor's generator (seed 0)
    direct = hessian_max_eigenvalue(module.net, DataLoader(Data("float").dataset, batch_size=8), loss="loss",
                                    max_examples=16, generator=torch.Generator().manual_seed(0))
    assert monitor.results["flatness/lambda_max_loss"].examples == 16
    assert monitor.results["flatness/lambda_max_loss"].flatness == pytest.approx(direct.flatness, rel=1e-6)
    assert monitor.results["flatness/lambda_max_rloss"].examples == 16
