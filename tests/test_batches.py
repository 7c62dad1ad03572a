"""The batch contract and the first examples of a loader as the loader yields them (its collate_fn included)."""

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lit_robust.data.batches import FirstExamples, inputs_and_targets
from lit_robust.errors import ConfigurationError

IMAGES = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
LABELS = torch.arange(10) % 3


def scale(examples):
    """A user's collate_fn: uint8 images to [0, 1] floats, batches (x, y, index)."""
    x = torch.stack([e[0] for e in examples]).float() / 255
    y = torch.stack([e[1] for e in examples])
    return x, y, torch.arange(len(examples))


def test_batch_forms():
    x, y = torch.zeros(2, 3), torch.ones(2)
    for batch in ((x, y), [x, y], (x, y, torch.arange(2))):
        got = inputs_and_targets(batch)
        assert got[0] is x and got[1] is y
    got = inputs_and_targets({"image": x, "label": y, "index": 0})
    assert got[0] is x and got[1] is y
    got = inputs_and_targets({"img": x, "target": y}, keys=("img", "target"))
    assert got[0] is x and got[1] is y
    with pytest.raises(ConfigurationError, match="batch_keys"):
        inputs_and_targets({"img": x, "target": y})
    with pytest.raises(ConfigurationError, match="batch="):
        inputs_and_targets(x)


def test_first_examples_use_the_loaders_collate_fn_and_shard():
    loader = DataLoader(TensorDataset(IMAGES, LABELS), batch_size=4, shuffle=True, collate_fn=scale)
    batches = list(FirstExamples(loader, 7))
    assert [len(y) for _, y in batches] == [4, 3]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and float(x.max()) <= 1
    assert torch.equal(x, IMAGES[:7].float() / 255)
    assert torch.equal(torch.cat([b[1] for b in batches]), LABELS[:7])
    assert len(list(FirstExamples(loader, 7))) == 2  # iterable again
    shares = [torch.cat([y for _, y in FirstExamples(loader, 7, rank=r, world_size=2, batch_size=2)])
              for r in (0, 1)]
    assert torch.equal(shares[0], LABELS[0:7:2]) and torch.equal(shares[1], LABELS[1:7:2])


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(0, 10, 4):
            yield {"image": IMAGES[i:i + 4].float() / 255, "label": LABELS[i:i + 4]}


def test_first_examples_of_an_iterable():
    loader = DataLoader(Stream(), batch_size=None)
    got = torch.cat([y for _, y in FirstExamples(loader, 7)])
    assert torch.equal(got, LABELS[:7])
    shares = [torch.cat([y for _, y in FirstExamples(loader, 7, rank=r, world_size=2)]) for r in (0, 1)]
    assert torch.equal(shares[0], LABELS[0:7:2]) and torch.equal(shares[1], LABELS[1:7:2])
    everything = [x for x, _ in FirstExamples(iter([(IMAGES.float(), LABELS, None)]))]
    assert len(everything) == 1 and len(everything[0]) == 10
