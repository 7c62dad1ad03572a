"""Time of one adversarial-training step: Lightning against plain PyTorch, and every variant against PGD-AT.

    python benchmarks/at_step.py [--network small_cnn|resnet18] [--batch-size 128] [--steps 20]
                                 [--repeats 5] [--device cpu|cuda] [--threads N]

1. One PGD-7 AT step through the LightningModule (``PGDAT.training_step``, backward and optimizer
   step, run by a ``Trainer`` with its hooks and logging) against plain PyTorch code that does
   exactly the same passes (7 attack iterations in eval mode, 1 forward and 1 backward pass in
   train mode, one SGD step) on its own copy of the network. Both run in this process, interleaved
   step by step (the plain step runs on the same batch right after each Lightning step), for
   ``repeats`` runs of ``steps`` steps; prints the median times per step and their ratio (target:
   at most 1.05).
2. Every AT variant exported by ``lit_robust.modules`` (found at run time) trains ``steps`` batches
   through a ``Trainer``, interleaved over ``repeats`` rounds; prints the median time per training
   batch relative to PGD-AT. All variants get the same batches: half of each comes from a
   pseudo-labelled ``.npz`` (PseudoLabeledDataModule), which UnlabeledAT requires and the others
   treat as any batch (x, y). A variant that asks for two views of each image (Consistency) gets them
   from a data module of its own (twice the examples per batch), HAT gets an untrained standard
   network of the same architecture, ``KDSWA`` two untrained teachers of the same network,
   ``TemporalEnsembling`` runs with its ensemble from the first epoch on plain batches (it needs
   example indices, which the pseudo-labelled pairs do not carry), and SAM is timed as SAM and as
   ASAM (``adaptive=True``). ``PGDAT+SWA`` is PGD-AT with the ``StochasticWeightAveraging`` callback
   collecting from the first epoch: its per-step cost; the collection's pass over the training data at
   the epoch's end is outside the timed steps.

A step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (the batch is already on the
device), with the device synchronised at both ends; the first two steps of every run are dropped.
Timings are wall-clock on whatever machine runs it; the ratios are what to compare.
"""

import argparse
import inspect
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback, Trainer
from torch import nn
from torch.utils.data import TensorDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import lit_robust.modules  # noqa: E402
from lit_robust.callbacks import StochasticWeightAveraging  # noqa: E402
from lit_robust.data import AdversarialDataModule, PseudoLabeledDataModule  # noqa: E402
from lit_robust.models import ResNet18, SmallCNN  # noqa: E402
from lit_robust.modules import KDSWA, PGDAT, AdversarialModule, TemporalEnsembling  # noqa: E402
from lit_robust.modules.base import paper_sgd  # noqa: E402

WARMUP = 2
NETWORKS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, int, int], float, float]] = {
    # network, image shape, epsilon, PGD step size: the digits recipe and the paper's CIFAR-10 recipe
    "small_cnn": (SmallCNN, (1, 8, 8), 0.1, 0.025),
    "resnet18": (ResNet18, (3, 32, 32), 8 / 255, 0.007),
}


class RandomImages(AdversarialDataModule):
    """Uniform random images in [0, 1] with random labels, every split the same set."""

    num_classes = 10

    def __init__(self, image_shape: Tuple[int, int, int], size: int, batch_size: int) -> None:
        super().__init__(batch_size=batch_size)
        self.image_shape = image_shape
        generator = torch.Generator().manual_seed(0)
        dataset = TensorDataset(torch.rand((size,) + image_shape, generator=generator),
                                torch.randint(0, 10, (size,), generator=generator))
        self.train_set = self.held_out_set = self.eval_set = self.train_eval_set = dataset


class StepTimer(Callback):
    """Wall-clock time of every training batch, hooks, step and logging included."""

    def __init__(self) -> None:
        self.times: List[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.times.append(time.perf_counter() - self.start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lightning_times(module: AdversarialModule, datamodule: AdversarialDataModule, steps: int, device: str,
                    after_each_step: Optional[Callback] = None) -> List[float]:
    """Per-step times of ``steps`` training batches of ``module`` run by a Trainer; ``after_each_step``
    runs after the timer has stopped."""
    timer = StepTimer()
    trainer = Trainer(accelerator=device, devices=1, max_epochs=1, limit_train_batches=steps, limit_val_batches=0,
                      num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False,
                      callbacks=[timer] + ([after_each_step] if after_each_step else []))
    trainer.fit(module, datamodule=datamodule)
    return timer.times[WARMUP:]


class PlainStep(Callback):
    """After each Lightning step, one step of PGD AT written in plain PyTorch on the same batch, with its
    own network and optimiser: the passes of PGDAT's step, nothing else. Timed alone."""

    def __init__(self, model: nn.Module, epsilon: float, step_size: float, attack_steps: int) -> None:
        self.model, self.optimizer = model, paper_sgd(model.parameters())
        self.epsilon, self.step_size, self.attack_steps = epsilon, step_size, attack_steps
        self.times: List[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x, y = batch
        model, epsilon = self.model, self.epsilon
        synchronize(x.device)
        start = time.perf_counter()
        model.eval()
        delta = (x + (2 * torch.rand_like(x) - 1) * epsilon).clamp(0, 1) - x
        for _ in range(self.attack_steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
            delta = (x + (delta.detach() + self.step_size * grad.sign()).clamp(-epsilon, epsilon)).clamp(0, 1) - x
        model.train()
        loss = F.cross_entropy(model(x + delta), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        synchronize(x.device)
        self.times.append(time.perf_counter() - start)


def lightning_against_plain(args, device: torch.device) -> None:
    make_network, shape, epsilon, step_size = NETWORKS[args.network]
    torch.manual_seed(0)
    module = PGDAT(make_network(), epsilon=epsilon, step_size=step_size, train_steps=7)
    plain_network = make_network().to(device)
    plain_network.load_state_dict(module.model.state_dict())
    datamodule = RandomImages(shape, args.steps * args.batch_size, args.batch_size)
    ours, theirs = [], []
    for _ in range(args.repeats):
        plain = PlainStep(plain_network, epsilon, step_size, 7)
        ours += lightning_times(module, datamodule, args.steps, device.type, after_each_step=plain)
        theirs += plain.times[WARMUP:]
    lightning, pytorch = statistics.median(ours), statistics.median(theirs)
    print(f"PGD-7 AT step, {args.network}, batch {args.batch_size}, {device.type}: "
          f"Lightning {lightning * 1e3:.2f} ms, plain PyTorch {pytorch * 1e3:.2f} ms, "
          f"ratio {lightning / pytorch:.3f} (target <= 1.05)")


def variants() -> List[Tuple[str, type, Dict]]:
    """Every AdversarialModule subclass that lit_robust.modules exports, PGD-AT first, as ``(name, class,
    extra arguments)``; a variant with a switch that changes its cost (ASAM) appears once more with it."""
    found = [cls for _, cls in inspect.getmembers(lit_robust.modules, inspect.isclass)
             if issubclass(cls, AdversarialModule) and cls is not AdversarialModule]
    entries = [(cls.__name__, cls, {}) for cls in sorted(found, key=lambda cls: (cls is not PGDAT, cls.__name__))]
    return entries + [(f"{name} ({key}={value})", cls, {key: value})
                      for name, cls, _ in entries for key, value in EXTRA_SETTINGS.get(name, [])] + [
        ("PGDAT+SWA", PGDAT, {})]


# settings timed besides each variant's defaults
EXTRA_SETTINGS = {"SAM": [("adaptive", True)]}


def requirements(cls: type, make_network: Callable[[], nn.Module]) -> Dict:
    """Arguments a variant cannot run without (untrained networks time the same): HAT's standard network,
    KDSWA's teachers; TemporalEnsembling's ensemble term from the first epoch."""
    if cls.__name__ == "HAT":
        return {"standard_model": make_network()}
    if cls is KDSWA:
        return {"robust_teacher": make_network(), "standard_teacher": make_network()}
    if cls is TemporalEnsembling:
        return {"start_epoch": 0, "end_epoch": 1}
    return {}


def variants_against_pgd_at(args, device: torch.device) -> None:
    make_network, shape, epsilon, step_size = NETWORKS[args.network]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "pseudo_labeled.npz")
        rng = np.random.default_rng(0)
        np.savez(path, images=rng.integers(0, 256, (args.batch_size,) + shape[1:] + shape[:1], dtype=np.uint8),
                 labels=rng.integers(0, 10, args.batch_size))
        plain = RandomImages(shape, args.steps * args.batch_size, args.batch_size)
        datamodule = PseudoLabeledDataModule(RandomImages(shape, args.steps * args.batch_size, args.batch_size), path)
        modules, datamodules, times, skipped = {}, {}, {}, {}
        for name, cls, extra in variants():
            torch.manual_seed(0)
            try:
                modules[name] = cls(make_network(), epsilon=epsilon, step_size=step_size, train_steps=7, **extra,
                                    **requirements(cls, make_network))
            except Exception as error:  # a variant's own requirements, reported rather than fatal
                skipped[name] = f"{type(error).__name__}: {error}"
            # a variant that asks for several views of each image gets a data module of its own to ask
            datamodules[name] = (plain if cls is TemporalEnsembling else datamodule
                                 if getattr(cls, "train_views", 1) == 1
                                 else RandomImages(shape, args.steps * args.batch_size, args.batch_size))
        for _ in range(args.repeats):
            for name, module in list(modules.items()):
                try:
                    callback = StochasticWeightAveraging(swa_start=0) if name == "PGDAT+SWA" else None
                    times.setdefault(name, []).extend(lightning_times(module, datamodules[name], args.steps,
                                                                      device.type, callback))
                except Exception as error:
                    skipped[name] = f"{type(error).__name__}: {error}"
                    del modules[name]
    reference = statistics.median(times[PGDAT.__name__])
    print(f"\nTime per training batch relative to PGD-AT (PGD-7), {args.network}, batch {args.batch_size}, "
          f"{device.type}:")
    for name, _, _ in variants():
        if name in modules:
            median = statistics.median(times[name])
            print(f"  {name:<24} {median * 1e3:9.2f} ms  {median / reference:6.2f}x")
        else:
            print(f"  {name:<24} skipped ({skipped[name]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default=None,
                        help="default: resnet18 on a GPU, small_cnn on a CPU")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="training batches per run (the first 2 are dropped)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs of each contender")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    args.network = args.network or ("resnet18" if args.device == "cuda" else "small_cnn")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    device = torch.device(args.device)
    lightning_against_plain(args, device)
    variants_against_pgd_at(args, device)


if __name__ == "__main__":
    main()
