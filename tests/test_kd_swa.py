"""KDSWA (Chen et al. ICLR 2021): the loss on a fixed batch against a reference written from the equation;
the teachers are frozen, outside the module's parameters and state_dict, loaded from checkpoints of this library."""

import functools

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning import Trainer

from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import KDSWA, PGDAT

ATTACKS = dict(epsilon=0.1, step_size=0.05, train_steps=2, val_steps=1, val_restarts=1, test_steps=1,
               test_restarts=1, test_on_train=False)


def teachers():
    torch.manual_seed(1)
    return SmallCNN(width=4), SmallCNN(width=4)


def reference_loss(logits, robust_logits, standard_logits, y, temperature=2.0, robust_weight=0.6,
                   standard_weight=0.1):
    """The distillation objective written out: (1 - l_R - l_S) CE + sum over teachers of
    l T^2 sum_k q_k log(q_k / p_k), q and p the softmaxes at T."""
    def kl(teacher):
        q = torch.softmax(teacher / temperature, dim=1)
        p = torch.softmax(logits / temperature, dim=1)
        return temperature ** 2 * (q * (q.log() - p.log())).sum(dim=1).mean()
    ce = -torch.log_softmax(logits, dim=1).gather(1, y[:, None]).mean()
    return (1 - robust_weight - standard_weight) * ce + robust_weight * kl(robust_logits) \
        + standard_weight * kl(standard_logits)


def test_loss_is_the_distillation_objective_on_the_adversarial_examples(digits):
    robust, standard = teachers()
    torch.manual_seed(0)
    module = KDSWA(SmallCNN(width=4), robust_teacher=robust, standard_teacher=standard, **ATTACKS)
    module.log_dict = module.log = lambda *a, **k: None
    x, y = next(iter(digits.train_dataloader()))
    seen = {}
    attack = module.train_attack.run
    module.train_attack.run = lambda *a, **k: seen.setdefault("result", attack(*a, **k))
    module.train()
    loss = module.training_step((x, y), 0)["loss"]
    x_adv = seen["result"].x_adv
    with torch.no_grad():
        expected = reference_loss(module.model(x_adv), robust.eval()(x_adv), standard.eval()(x_adv), y)
    assert torch.allclose(loss.detach(), expected, atol=1e-5)
    assert not torch.allclose(loss.detach(), F.cross_entropy(module.model(x_adv), y).detach(), atol=1e-3)


def test_teachers_are_frozen_and_not_part_of_the_module(digits, tmp_path):
    robust, standard = teachers()
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in (robust, standard)]
    torch.manual_seed(0)
    module = KDSWA(SmallCNN(width=4), robust_teacher=robust, standard_teacher=standard,
                   optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), **ATTACKS)
    teacher_ids = {id(p) for t in (robust, standard) for p in t.parameters()}
    assert not teacher_ids & {id(p) for p in module.parameters()}
    assert all(name.startswith(("model.", "val_metrics", "test_metrics")) for name in module.state_dict())
    assert len(module.state_dict()) == len(PGDAT(SmallCNN(width=4)).state_dict())
    student_before = [p.detach().clone() for p in module.model.parameters()]
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                      default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=digits)
    for teacher, state in zip((robust, standard), before):
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(teacher.state_dict()[k], v) for k, v in state.items())  # BN statistics included
    assert any(not torch.equal(p, q) for p, q in zip(module.model.parameters(), student_before))  # it trained
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    saved = torch.load(tmp_path / "student.ckpt", weights_only=True)
    assert "robust_teacher" not in saved["hyper_parameters"]
    assert set(saved["state_dict"]) == set(module.state_dict())


def test_teachers_load_from_checkpoints_of_this_library(tmp_path):
    robust, standard = teachers()
    paths = []
    for name, network in (("robust", robust), ("standard", standard)):
        owner = PGDAT(network)
        paths.append(str(tmp_path / f"{name}.ckpt"))
        torch.save({"state_dict": owner.state_dict()}, paths[-1])
    module = KDSWA(SmallCNN(width=4), robust_teacher=paths[0], standard_teacher=paths[1], **ATTACKS)
    assert module.hparams.robust_teacher == paths[0]
    for loaded, original in zip(module.teachers, (robust, standard)):
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.state_dict().items())
        assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("kwargs, setting", [
    (dict(robust_teacher=None), "robust_teacher"), (dict(standard_teacher="missing.ckpt"), "standard_teacher"),
    (dict(temperature=0.0), "temperature"), (dict(robust_weight=-0.1), "robust_weight"),
    (dict(standard_weight=-0.1), "standard_weight"), (dict(robust_weight=0.8, standard_weight=0.3), "standard_weight"),
])
def test_bad_settings_are_refused(kwargs, setting):
    settings = dict(zip(("robust_teacher", "standard_teacher"), teachers()))
    settings.update(kwargs)
    with pytest.raises(ConfigurationError, match=f"^{setting}="):
        KDSWA(SmallCNN(width=4), **settings)
