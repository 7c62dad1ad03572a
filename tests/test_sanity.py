"""Gradient-masking sanity warnings (lit_robust/attacks/sanity.py) and where they run: test start, evaluate()."""

import warnings

import pytest
import torch
from pytorch_lightning import Trainer
from torch import nn

from lit_robust.attacks import PGD
from lit_robust.attacks.evaluation import evaluate
from lit_robust.attacks.sanity import check_gradient_masking
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT


class Softmaxed(nn.Module):
    """A network that (wrongly) returns probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.network = SmallCNN(width=4)

    def forward(self, x):
        return self.network(x).softmax(dim=1)


class Rounded(nn.Module):
    """A network whose input is rounded to 8 bits: its input gradient is zero everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.network = SmallCNN(width=4)

    def forward(self, x):
        return self.network(torch.round(x * 255) / 255)


class Noisy(nn.Module):
    """A randomised defence: Gaussian noise on the input, in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.network = SmallCNN(width=4)

    def forward(self, x):
        return self.network(x + 0.1 * torch.randn_like(x))


@pytest.fixture
def batch(digits):
    return next(iter(digits.test_dataloader()))


@pytest.mark.parametrize("model, phrase", [(Softmaxed, "probabilities"), (Rounded, "exactly zero"),
                                           (Noisy, "change between forward passes")])
def test_each_symptom_is_reported_with_advice(model, phrase, batch):
    x, y = batch
    with pytest.warns(UserWarning, match=phrase):
        findings = check_gradient_masking(model(), x, y)
    assert len(findings) == 1 and phrase in findings[0]


def test_zero_gradient_count_names_every_example(batch):
    x, y = batch
    with pytest.warns(UserWarning):
        (finding,) = check_gradient_masking(Rounded(), x, y)
    assert finding.startswith(f"{len(y)} of {len(y)} examples")


def test_a_healthy_network_passes_and_is_left_as_it_was(batch):
    x, y = batch
    model = SmallCNN(width=4).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_gradient_masking(model, x, y) == []
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_evaluate_runs_the_checks_on_its_first_batch(digits):
    attack = PGD(0.1, 0.025, 2)
    with pytest.warns(UserWarning, match="probabilities"):
        totals = evaluate(Softmaxed(), digits.test_dataloader(), attack, torch.device("cpu"), sanity_checks=True)
    assert int(totals["count"]) == len(digits.eval_set)


def test_checks_run_once_at_test_start(digits, tmp_path):
    module = PGDAT(Softmaxed(), epsilon=0.1, step_size=0.025, test_steps=1, test_restarts=1, test_on_train=False)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, inference_mode=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), limit_test_batches=2)
    digits.eval_batch_size = 32
    with pytest.warns(UserWarning, match="probabilities") as record:
        trainer.test(module, datamodule=digits, verbose=False)
    assert sum("probabilities" in str(w.message) for w in record) == 1
