"""What every variant shares acts for every variant exported by lit_robust.modules, by construction: the
L1 penalty, the training metrics and the stop on a non-finite training loss."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_robust.attacks import FGSM, ThreatModel, threat_model_of
from lit_robust.callbacks import MetricsFile
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT, StandardTraining
from tests.helpers import VARIANT_ARGUMENTS, VARIANT_DATA, VARIANTS, trainer, variant


def test_every_variant_is_covered():
    assert {cls.__name__ for cls in VARIANTS} >= {"PGDAT", "TRADES", "EntropySGD", "FriendlyAT", "UnlabeledAT",
                                                  "RotationSelfSupervised", "AWP", "AMP", "KDSWA", "HAT", "SAM",
                                                  "Consistency", "TemporalEnsembling", "StandardTraining"}
    names = {cls.__name__ for cls in VARIANTS}
    assert set(VARIANT_ARGUMENTS) <= names and set(VARIANT_DATA) <= names  # no row for a variant that is gone


def first_step(cls, tmp_path, l1_penalty):
    """One training batch of ``cls`` on digits: the network's gradients and weights right after the first
    backward pass (after the module's own ``on_after_backward``), the trainer and the module."""
    torch.manual_seed(0)
    module, data = variant(cls, tmp_path, l1_penalty=l1_penalty)
    recorded = {}
    hook = module.on_after_backward

    def record():
        hook()
        if not recorded:
            recorded.update({name: (w.grad.clone(), w.detach().clone()) for name, w in module.model.named_parameters()
                             if w.grad is not None})

    module.on_after_backward = record
    run = trainer(tmp_path, limit_train_batches=1)
    run.fit(module, datamodule=data)
    return recorded, run, module


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda cls: cls.__name__)
def test_l1_penalty_and_training_metrics_act_for_every_variant(cls, tmp_path):
    lam = 1e-2
    without, _, _ = first_step(cls, tmp_path, 0.0)
    with_l1, run, module = first_step(cls, tmp_path, lam)
    # L1 (Yan et al. 2022, Table 4): lambda sign(w) added to the gradients of convolutional and linear weights only
    selected = {f"{name}.weight" for name, layer in module.model.named_modules()
                if isinstance(layer, (nn.Conv2d, nn.Linear))}
    assert without.keys() == with_l1.keys() and selected
    for name, (grad, weight) in with_l1.items():
        expected = lam * weight.sign() if name in selected else torch.zeros_like(weight)
        assert torch.allclose(grad - without[name][0], expected, atol=1e-6), name
    # the training metrics, logged by the base class from what training_step returned
    metrics = run.callback_metrics
    names = ("loss", "err") if cls is StandardTraining else ("loss", "rloss", "rerr")
    for name in names:
        assert torch.isfinite(metrics[f"train/{name}"]), name
    error = metrics["train/err" if cls is StandardTraining else "train/rerr"]
    assert 0 <= float(error) <= 1
    if cls is not StandardTraining:
        assert float(metrics["train/rloss"]) > 0  # a cross-entropy, not a placeholder


def test_training_metrics_are_the_returned_logits_cross_entropy_and_error():
    """log_training computes RLoss and RErr from the returned adversarial logits and labels (one batch)."""
    module, _ = variant(PGDAT, None)
    logged = {}
    module.log_dict = lambda values, **k: logged.update(values)
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]]), torch.tensor([0, 0, 0])
    module.log_training({"loss": torch.tensor(1.5), "adversarial_logits": logits, "y": y})
    assert logged["train/loss"].item() == 1.5
    assert logged["train/rloss"].item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert logged["train/rerr"].item() == pytest.approx(1 / 3)
    with pytest.raises(TypeError, match="adversarial_logits"):
        module.log_training({"loss": torch.tensor(1.5)})


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda cls: cls.__name__)
def test_nonfinite_training_loss_stops_every_variant(cls, tmp_path):
    torch.manual_seed(0)
    module, data = variant(cls, tmp_path)
    with torch.no_grad():  # the network's output, and so the training loss, is not a number
        next(p for name, p in module.model.named_parameters() if name.endswith("weight")).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss .* at epoch 0, global step 0"):
        trainer(tmp_path, limit_train_batches=1).fit(module, datamodule=data)


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda cls: cls.__name__)
def test_every_attack_of_every_variant_reads_the_threat_model(cls, tmp_path):
    module, _ = variant(cls, tmp_path, epsilon=0.1, step_size=0.03, train_epsilon=0.12)
    assert module.threat_model == ThreatModel(0.1, 0.03, "linf")
    assert module.train_threat_model == ThreatModel(0.12, 0.03, "linf")
    for attack in (module.val_attack, module.test_attack):
        assert (attack.epsilon, attack.step_size, attack.norm) == (0.1, 0.03, "linf")
    if module.train_attack is not None:  # StandardTraining has none
        assert module.train_attack.epsilon == 0.12
        if not isinstance(module.train_attack, FGSM):  # FGSM's step is step_factor * epsilon
            assert (module.train_attack.step_size, module.train_attack.steps) == (0.03, 1)


def test_a_module_without_threat_model_is_refused_by_name():
    with pytest.raises(ConfigurationError, match="^model='Linear' is not allowed: .*threat_model.*FlatnessMonitor"):
        threat_model_of(nn.Linear(2, 2), "FlatnessMonitor")
    assert threat_model_of(PGDAT(nn.Linear(2, 2), epsilon=0.2, step_size=0.1), "X") == ThreatModel(0.2, 0.1)


def test_metrics_json_only_with_the_metrics_file_callback(digits, tmp_path):
    """A trainer built by hand writes no metrics.json; with MetricsFile (which train.py adds) the test metrics,
    the epoch and the global step."""
    module, _ = variant(PGDAT, tmp_path, test_steps=1, test_restarts=1, test_on_train=False)
    trainer(tmp_path / "plain", limit_test_batches=1).test(module, datamodule=digits, verbose=False)
    assert not list(tmp_path.rglob("metrics.json"))
    run = trainer(tmp_path / "file", limit_test_batches=1, callbacks=[MetricsFile()])
    result = run.test(module, datamodule=digits, verbose=False)[0]
    metrics = json.loads((tmp_path / "file" / "metrics.json").read_text())
    assert metrics["test/rerr_pgd"] == pytest.approx(result["test/rerr_pgd"])
    assert (metrics["epoch"], metrics["global_step"], metrics["ckpt_path"]) == (0, 0, None)


def test_a_network_of_another_number_of_classes_is_refused_before_training(digits, tmp_path):
    module, _ = variant(PGDAT, tmp_path, network=SmallCNN(num_classes=5, width=4))
    with pytest.raises(ConfigurationError, match=r"^model.num_classes=5 is not allowed: .* 10 \(DigitsDataModule\)"):
        trainer(tmp_path, limit_train_batches=1).fit(module, datamodule=digits)
    assert module.global_step == 0


@pytest.mark.parametrize("network, setting", [
    (SmallCNN(width=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
     r"model.mean=\[0.5, 0.5, 0.5\] is not allowed: model.mean must be one value per channel of the images, 1"),
    (SmallCNN(width=4, mean=(0.5,)),
     r"model.mean=\[0.5\] is not allowed: model.mean must be the data module's mean, \[0.3062\]"),
    (SmallCNN(width=4, std=(1.0,)),
     r"model.std=\[1.0\] is not allowed: model.std must be the data module's std, \[0.3779\]"),
], ids=["channels", "mean", "std"])
def test_a_network_normalised_for_other_data_is_refused_before_training(network, setting, digits, tmp_path):
    module, _ = variant(PGDAT, tmp_path, network=network)
    with pytest.raises(ConfigurationError, match="^" + setting):
        trainer(tmp_path, limit_train_batches=1).fit(module, datamodule=digits)
    assert module.global_step == 0
