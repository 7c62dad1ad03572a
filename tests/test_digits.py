"""The embedded digits data module: real data, [0, 1], disjoint seeded splits, clear errors."""

import re

import pytest
import torch

from lit_robust.data import DigitsDataModule
from lit_robust.errors import ConfigurationError


def _indices(subset):
    return set(subset.indices)


def test_splits_are_disjoint_sized_and_seeded():
    dm = DigitsDataModule(held_out_size=100, eval_size=300, train_eval_size=50)
    dm.setup("fit")
    assert len(dm.held_out_set) == 100 and len(dm.eval_set) == 300
    assert len(dm.train_set) == 1797 - 400 and len(dm.train_eval_set) == 50
    assert not _indices(dm.held_out_set) & _indices(dm.eval_set)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(torch.cat([b[1] for b in dm.test_dataloader()]).tolist()) == set(range(10))
    again = DigitsDataModule(held_out_size=100, eval_size=300, train_eval_size=50)
    again.setup("fit")
    assert _indices(again.eval_set) == _indices(dm.eval_set)
    other = DigitsDataModule(held_out_size=100, eval_size=300, train_eval_size=50, split_seed=1)
    other.setup("fit")
    assert _indices(other.eval_set) != _indices(dm.eval_set)


def test_train_eval_is_unaugmented_training_data():
    dm = DigitsDataModule(held_out_size=100, eval_size=100, train_eval_size=20, shift=2)
    dm.setup("fit")
    images, _ = DigitsDataModule.load()
    train_eval = torch.stack([dm.train_eval_set[i][0] for i in range(20)])
    assert torch.equal(train_eval, images[dm.train_eval_set.indices])
    assert not _indices(dm.train_eval_set) & (_indices(dm.held_out_set) | _indices(dm.eval_set))
    torch.manual_seed(0)
    shifted = torch.stack([dm.train_set[i][0] for i in range(50)])
    assert not torch.equal(shifted, dm.train_set.images[:50])  # augmentation on training only


@pytest.mark.parametrize("kwargs, setting", [
    (dict(held_out_size=1000, eval_size=900), "held_out_size + eval_size"),
    (dict(train_eval_size=5000), "train_eval_size"),
    (dict(eval_size=0), "eval_size"),
    (dict(batch_size=0), "batch_size"),
])
def test_split_larger_than_data_fails_at_construction(kwargs, setting):
    with pytest.raises(ConfigurationError, match="^" + re.escape(setting) + "=.*must be"):
        DigitsDataModule(**kwargs)
