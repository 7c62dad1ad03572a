"""WeightClipping: after every optimizer step the chosen parameters equal clamp(w - lr * grad, -w_max, w_max),
checked inside Lightning's hooks against the SGD step written out; the other parameters are untouched;
weight averaging, wherever it sits in the callback list, averages the clipped weights."""

import functools

import pytest
import torch
from pytorch_lightning import Callback

from lit_robust.callbacks import WeightAveraging, WeightClipping
from lit_robust.errors import ConfigurationError
from lit_robust.weights import select_parameters
from tests.helpers import tiny_pgdat, tiny_trainer

W_MAX = 0.02
LR = 0.1


class ExpectedStep(Callback):
    """Before each step, writes out plain SGD followed by clipping; after it, compares."""

    def __init__(self, parameters, averaging):
        self.parameters, self.averaging = parameters, averaging
        self.expected = None
        self.steps = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        clipped = {name for name, _ in select_parameters(pl_module.model, self.parameters)}
        self.expected = {}
        for name, parameter in pl_module.model.named_parameters():
            stepped = parameter.detach() - LR * parameter.grad
            self.expected[name] = stepped.clamp(-W_MAX, W_MAX) if name in clipped else stepped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.steps:  # accumulate_grad_batches=2: no step after this batch
            return
        for name, parameter in pl_module.model.named_parameters():
            assert torch.allclose(parameter, self.expected[name], atol=1e-7), name
        clipped = [p for _, p in select_parameters(self.averaging._average_model.module.model, self.parameters)]
        assert all(p.abs().max() <= W_MAX + 1e-7 for p in clipped)
        self.steps += 1


@pytest.mark.parametrize("parameters", ["all", "weights"])
def test_parameters_are_clipped_after_every_optimizer_step(digits, parameters):
    module = tiny_pgdat(optimizer=functools.partial(torch.optim.SGD, lr=LR))
    averaging = WeightAveraging(decay=0.5)
    expected = ExpectedStep(parameters, averaging)
    # averaging first in the list: it must still average the clipped weights
    trainer = tiny_trainer([averaging, expected, WeightClipping(max_value=W_MAX, parameters=parameters)],
                           max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=digits)
    assert trainer.global_step == expected.steps == 2

    names = dict(select_parameters(module.model, parameters))
    for name, parameter in module.model.named_parameters():
        if name in names:
            assert parameter.abs().max() <= W_MAX + 1e-7
    unclipped = [p for name, p in module.model.named_parameters() if name not in names]
    assert any(p.abs().max() > W_MAX for p in unclipped)  # batch norm (and biases for "weights") untouched
    assert any(torch.isclose(p.abs(), torch.tensor(W_MAX)).any() for p in names.values())  # clipping was active


@pytest.mark.parametrize("arguments", [{"max_value": 0.0}, {"max_value": -0.01}, {"parameters": "norm"}])
def test_bad_arguments_are_refused(arguments):
    with pytest.raises(ConfigurationError, match="max_value|parameters"):
        WeightClipping(**arguments)
