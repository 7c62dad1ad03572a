"""The batch contract: what the library reads from a batch, and the first examples of a loader as it yields them.

A batch is a tuple or list whose first two elements are the inputs ``x`` and the labels ``y`` (further elements,
such as example indices, are ignored), or a mapping from which ``x`` and ``y`` are read under two keys
(``("image", "label")`` unless told otherwise: a module's ``batch_keys``). ``x`` is a tensor, or a list of
tensors for several augmented views of every image (``([X_1, X_2], Y)``). The inputs are what the loader
yields, after its own ``collate_fn``: every attack, measure and callback sees the same tensors the training step sees.
"""

from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Subset

from lit_robust.errors import check

DEFAULT_BATCH_KEYS: Tuple[str, str] = ("image", "label")


Inputs = Union[Tensor, Sequence[Tensor]]
"""The inputs of a batch: a tensor, or a list of tensors (several augmented views of every image)."""


def _is_inputs(value: Any) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, (list, tuple)) and len(value) > 0
                                         and all(isinstance(v, Tensor) for v in value))


def inputs_and_targets(batch: Any, keys: Sequence[str] = DEFAULT_BATCH_KEYS,
                       labelled: bool = True) -> Tuple[Inputs, Optional[Tensor]]:
    """``(x, y)`` of ``batch``: its first two elements, or the values under ``keys`` for a mapping.

    Args:
        batch: what a loader yields.
        keys: the names of the inputs and the labels in a mapping batch.
        labelled: whether the batch must have labels; otherwise a batch of inputs alone (a tensor, a
            one-element tuple or a mapping without the label key) gives ``(x, None)``.

    Raises:
        ConfigurationError: naming the batch contract when ``batch`` follows neither form.
    """
    if isinstance(batch, Mapping):
        missing = [key for key in keys[:2 if labelled else 1] if key not in batch]
        check(not missing, "batch_keys", tuple(keys),
              f"the keys of the inputs and labels in the loader's dict batches (keys present: {sorted(batch)})")
        return batch[keys[0]], batch.get(keys[1])
    if not labelled and isinstance(batch, Tensor):
        return batch, None
    if not labelled and isinstance(batch, (tuple, list)) and len(batch) == 1 and _is_inputs(batch[0]):
        return batch[0], None
    check(isinstance(batch, (tuple, list)) and len(batch) >= 2 and _is_inputs(batch[0])
          and isinstance(batch[1], Tensor), "batch", type(batch).__name__,
          "a tuple or list whose first two elements are the input and label tensors, or a dict with batch_keys")
    return batch[0], batch[1]


class FirstExamples:
    """The first ``examples`` examples of ``loader`` (all when ``None``) as ``(x, y)`` batches, this process's share.

    Iterable as often as needed (each pass reads the loader anew). A :class:`~torch.utils.data.DataLoader` over a
    map-style dataset is subset to the examples ``rank, rank + world_size, ...`` below ``examples`` and re-batched
    with its own ``collate_fn``, workers and memory pinning, in order (its sampler's shuffling does not apply);
    any other iterable is read as it yields, cut after ``examples`` examples, each process keeping the examples
    at its positions of the stream.

    Args:
        loader: a data module's loader, as it returns it.
        examples: how many examples from the start; ``None`` for all.
        rank: this process's rank under DDP.
        world_size: the number of processes.
        batch_size: the batch size; default the loader's own.
        keys: the keys of mapping batches (see :func:`inputs_and_targets`).
    """

    def __init__(self, loader: Iterable, examples: Optional[int] = None, rank: int = 0, world_size: int = 1,
                 batch_size: Optional[int] = None, keys: Sequence[str] = DEFAULT_BATCH_KEYS) -> None:
        check(examples is None or examples >= 1, "examples", examples, "an integer >= 1 (or None for all)")
        check(batch_size is None or batch_size >= 1, "batch_size", batch_size, "an integer >= 1 (or None)")
        self.loader, self.examples, self.rank, self.world_size = loader, examples, rank, world_size
        self.batch_size, self.keys = batch_size, tuple(keys)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        loader = self.loader
        if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
            total = len(loader.dataset)
            count = total if self.examples is None else min(self.examples, total)
            subset = Subset(loader.dataset, list(range(self.rank, count, self.world_size)))
            workers = loader.num_workers
            rebatched = DataLoader(subset, batch_size=self.batch_size or loader.batch_size or count, shuffle=False,
                                   collate_fn=loader.collate_fn, num_workers=workers, pin_memory=loader.pin_memory,
                                   worker_init_fn=loader.worker_init_fn,
                                   multiprocessing_context=loader.multiprocessing_context if workers else None)
            for batch in rebatched:
                yield inputs_and_targets(batch, self.keys)
            return
        seen = 0
        for batch in loader:
            x, y = inputs_and_targets(batch, self.keys)
            if self.examples is not None:
                x, y = x[:self.examples - seen], y[:self.examples - seen]
            share = slice((self.rank - seen) % self.world_size, None, self.world_size)
            seen += len(y)
            if len(y[share]):
                yield x[share], y[share]
            if self.examples is not None and seen >= self.examples:
                return
