"""The batch contract across the modules: every variant trains on dict batches (keys from ``batch_keys``), and
the base class's validation, test, testing on training examples and predict give the same numbers for ``(x, y)``,
``(x, y, index)`` and dict batches; testing on training examples reads the data module's own loader (its
collate_fn and batch size; no ``eval_batch_size`` needed), with the numbers of the library's data modules
unchanged."""

import pytest
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.dataloader import default_collate

from lit_robust.attacks.evaluation import evaluate
from lit_robust.data import DigitsDataModule
from lit_robust.errors import ConfigurationError
from lit_robust.models import SmallCNN
from lit_robust.modules import PGDAT
from tests.helpers import VARIANT_DATA, VARIANTS, trainer, variant

KEYS = ("img", "target")


def as_dict(examples):
    """A collate_fn giving dict batches under KEYS (and ``index`` where the examples have one)."""
    batch = default_collate(examples)
    return {KEYS[0]: batch[0], KEYS[1]: batch[1], **({"index": batch[2]} if len(batch) > 2 else {})}


def with_index(examples):
    """A collate_fn giving ``(x, y, index)`` batches."""
    x, y = default_collate(examples)[:2]
    return x, y, torch.arange(len(y))


class Collated(DigitsDataModule):
    """Digits whose every loader batches with ``collate`` (default: the plain one)."""

    def __init__(self, collate=None, **kwargs):
        super().__init__(held_out_size=32, eval_size=32, train_eval_size=32, batch_size=16, **kwargs)
        self.collate = collate

    def _loader(self, dataset, shuffle, batch_size, drop_last=False):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          collate_fn=self.collate)


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda cls: cls.__name__)
def test_every_variant_trains_on_dict_batches(cls, tmp_path):
    module, _ = variant(cls, tmp_path, batch_keys=KEYS)
    data = VARIANT_DATA.get(cls.__name__, lambda d, _: d)(Collated(as_dict), tmp_path)
    run = trainer(tmp_path, limit_train_batches=1)
    run.fit(module, datamodule=data)
    assert torch.isfinite(run.callback_metrics["train/loss"])


def protocol(collate, tmp_path, **settings):
    """Validation, test (with testing on training examples) and predict of a seeded PGDAT on digits batched by
    ``collate``: the logged metrics and the predicted labels."""
    torch.manual_seed(0)
    module = PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, train_steps=1, val_steps=2, val_restarts=1,
                   test_steps=2, test_restarts=1, predict_adversarial=True, **settings)
    data = Collated(collate)
    run = trainer(tmp_path, limit_train_batches=2, limit_val_batches=None)
    run.fit(module, datamodule=data)
    metrics = {name: float(value) for name, value in run.callback_metrics.items()}
    metrics.update(run.test(module, datamodule=data, verbose=False)[0])
    predictions = run.predict(module, datamodule=data)
    return metrics, torch.cat([p["labels"] for p in predictions]), torch.cat([p["adversarial_labels"]
                                                                                for p in predictions])


def test_plain_indexed_and_dict_batches_give_the_same_numbers(tmp_path):
    plain = protocol(None, tmp_path)
    assert {"val/rloss", "test/rloss_pgd", "test/rloss_pgd_train"} <= set(plain[0])
    for collate, settings in ((with_index, {}), (as_dict, dict(batch_keys=KEYS))):
        metrics, labels, adversarial = protocol(collate, tmp_path, **settings)
        assert metrics == pytest.approx(plain[0], rel=1e-6, abs=1e-7)
        assert torch.equal(labels, plain[1]) and torch.equal(adversarial, plain[2])


def test_unlabelled_predict_batches_and_bad_batch_keys(tmp_path):
    module = PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025)
    x = torch.rand(6, 1, 8, 8)
    for loader in (DataLoader(TensorDataset(x), batch_size=3), DataLoader(x, batch_size=3)):
        labels = torch.cat([p["labels"] for p in trainer(tmp_path).predict(module, dataloaders=loader)])
        assert torch.equal(labels, module.model.eval()(x).argmax(dim=1))
    with pytest.raises(ConfigurationError, match="batch_keys"):
        PGDAT(SmallCNN(width=4), batch_keys=("image", "image"))


def test_testing_on_training_examples_keeps_the_numbers_of_the_library_data(tmp_path):
    """The library's own data modules: test/*_train as the plain ordered loader of eval_batch_size gave them."""
    torch.manual_seed(0)
    module = PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, test_steps=2, test_restarts=1)
    module.test_attack.random_start = False
    data = DigitsDataModule(held_out_size=16, eval_size=16, train_eval_size=40, batch_size=8, eval_batch_size=16)
    got = trainer(tmp_path).test(module, datamodule=data, verbose=False)[0]
    totals = evaluate(module.model.eval(), DataLoader(data.train_eval_set, batch_size=16), module.test_attack,
                      torch.device("cpu"))
    for name, key in (("err", "err_train"), ("loss", "loss_train"), ("rerr", "rerr_pgd_train"),
                      ("rloss", "rloss_pgd_train")):
        assert got[f"test/{key}"] == pytest.approx(float(totals[name] / totals["count"]), rel=1e-6), key


class Pixels(LightningDataModule):
    """uint8 pixels scaled to [0, 1] by the collate_fn, batches (x, y, index), no eval_batch_size; or (with
    ``scaled``) the same images as float tensors, plain batches."""

    def __init__(self, scaled: bool) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (24, 1, 8, 8), generator=generator, dtype=torch.uint8)
        labels = torch.arange(24) % 10
        self.data = TensorDataset(pixels.float() / 255 if scaled else pixels, labels)
        self.collate = None if scaled else (lambda b: (torch.stack([e[0] for e in b]).float() / 255,
                                                       torch.stack([e[1] for e in b]), torch.zeros(len(b))))

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=8, collate_fn=self.collate)

    train_eval_dataloader = test_dataloader


def test_testing_on_training_examples_reads_the_loader_as_it_yields(tmp_path):
    results = []
    for scaled in (False, True):
        torch.manual_seed(0)
        module = PGDAT(SmallCNN(width=4), epsilon=0.1, step_size=0.025, test_steps=2, test_restarts=1)
        results.append(trainer(tmp_path).test(module, datamodule=Pixels(scaled), verbose=False)[0])
    assert set(results[0]) >= {"test/loss_train", "test/rloss_pgd_train"}
    assert results[0] == pytest.approx(results[1], rel=1e-6)
    assert results[0]["test/loss_train"] <= results[0]["test/rloss_pgd_train"]
