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


def test_train_size_takes_the_first_training_images_and_moves_no_other_split():
    full = DigitsDataModule(held_out_size=100, eval_size=300, train_eval_size=50)
    small = DigitsDataModule(held_out_size=100, eval_size=300, train_eval_size=50, train_size=120)
    full.setup("fit")
    small.setup("fit")
    assert len(small.train_set) == 120
    assert torch.equal(small.train_set.images, full.train_set.images[:120])
    assert torch.equal(small.train_set.labels, full.train_set.labels[:120])
    assert small.held_out_set.indices == full.held_out_set.indices
    assert small.eval_set.indices == full.eval_set.indices
    assert small.train_eval_set.indices == full.train_eval_set.indices  # the first 50 of the 120


@pytest.mark.parametrize("kwargs", [dict(train_size=0), dict(train_size=1798 - 400),
                                    dict(train_size=30, train_eval_size=50)])
def test_bad_train_size_is_refused(kwargs):
    setting = "train_eval_size" if "train_eval_size" in kwargs else "train_size"
    with pytest.raises(ConfigurationError, match="^" + setting + "=.*must be"):
        DigitsDataModule(held_out_size=100, eval_size=300, **{"train_eval_size": 20, **kwargs})
