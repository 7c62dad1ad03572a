"""AdversarialModule(compile=True): the network is compiled in place, and PGD takes its input gradients
through the compiled network (same adversarial examples as without compilation)."""

import functools

import pytest
import torch
from torch import nn

from lit_robust.attacks import PGD
from lit_robust.modules import PGDAT


def compile_available() -> bool:
    try:
        torch.compile(lambda x: x + 1, backend="eager")(torch.zeros(1))
        return True
    except Exception:  # e.g. a Python version that TorchDynamo does not support
        return False


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend: TorchDynamo's graph capture and AOTAutograd's forward and
    backward graphs, as with inductor, without inductor's code generation (minutes on a small CPU)."""
    if not compile_available():
        pytest.fail("torch.compile does not work in this environment")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))


def network() -> nn.Module:
    """A small convolutional network on 8x8 digits (few operations: tracing stays quick)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_compiled_module_keeps_parameter_names_and_attack(aot_eager):
    torch.manual_seed(0)
    plain = PGDAT(model=network(), epsilon=0.1, step_size=0.025, train_steps=3)
    compiled = PGDAT(model=network(), epsilon=0.1, step_size=0.025, train_steps=3, compile=True)
    compiled.load_state_dict(plain.state_dict())
    compiled.configure_model()
    plain.configure_model()  # compile=False: nothing happens
    assert compiled.model._compiled_call_impl is not None and plain.model._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints unchanged

    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    attack = PGD(0.1, 0.025, 3, random_start=False)  # deterministic: same start, same steps
    x_plain, x_compiled = attack(plain.model, x, y), attack(compiled.model, x, y)
    assert (x_plain - x).abs().max() > 0.05  # the attack moved (it has input gradients)
    torch.testing.assert_close(x_compiled, x_plain, atol=1e-5, rtol=0)
    for parameter in compiled.parameters():
        assert parameter.grad is None
