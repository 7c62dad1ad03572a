"""Average- and worst-case flatness in RLoss and Loss, logged during training and on test (papers/001 Sec. D)."""

from abc import ABC, abstractmethod
from typing import Any, Dict, Literal, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import Subset
from typing_extensions import override

from lit_robust.errors import check, check_choice
from lit_robust.evaluation import loader, shard
from lit_robust.flatness import MEASURES, FlatnessMeasures, FlatnessResult, Measure

Split = Literal["eval", "train"]
SPLITS = ("eval", "train")


class ScheduledMeasurement(Callback, ABC):
    """Runs :meth:`_measure` on the weights validation uses, every few epochs during fit, and on test.

    During fit, after every ``every_n_epochs``-th training epoch, it runs on the last batch of the
    last validation loader, while the validation weights are in place. Measuring there rather than
    in ``on_validation_epoch_end`` sees what validation sees whatever the order of the callbacks:
    Lightning's own weight averaging swaps the current weights back in its
    ``on_validation_epoch_end``, which may run first. In an epoch without validation it runs at the
    end of the training epoch instead; on test at the end of the test epoch.

    Args:
        every_n_epochs: measure after every this many training epochs; 0 only on test.
        on_test: also measure on test.
    """

    def __init__(self, every_n_epochs: int, on_test: bool) -> None:
        check(isinstance(every_n_epochs, int) and every_n_epochs >= 0, "every_n_epochs", every_n_epochs,
              "an integer >= 0 (0: only on test)")
        self.every_n_epochs = every_n_epochs
        self.on_test = on_test
        self._measured_epoch = -1

    @abstractmethod
    def _measure(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Measure ``pl_module`` now; ``stage`` is ``"fit"`` or ``"test"``."""

    def _due(self, trainer: "pl.Trainer") -> bool:
        return (self.every_n_epochs > 0 and not trainer.sanity_checking and trainer.state.fn == "fit"
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0
                and self._measured_epoch != trainer.current_epoch)

    def _run(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._measured_epoch = trainer.current_epoch
        self._measure(trainer, pl_module, stage)

    @override
    def on_validation_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        batches = trainer.num_val_batches
        last = dataloader_idx == len(batches) - 1 and batch_idx == batches[dataloader_idx] - 1
        if last and self._due(trainer):
            self._run(trainer, pl_module, "fit")

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._due(trainer):
            self._run(trainer, pl_module, "fit")

    @override
    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.on_test:
            self._run(trainer, pl_module, "test")


class FlatnessMonitor(ScheduledMeasurement):
    """Log the paper's four flatness measures every few epochs and on test.

    Metric names (ARCHITECTURE.md): ``flatness/avg_rloss``, ``flatness/worst_rloss``,
    ``flatness/avg_loss``, ``flatness/worst_loss`` on the evaluation split (the data module's
    ``test_dataloader``, the paper's first 1000 test images) and the same with suffix ``_train`` on
    the train-eval split (the first training images, papers/001 Fig. D middle left); for the
    average-case measures also their standard deviation over the weight samples,
    ``flatness/avg_rloss_std`` etc. (papers/001 Fig. D left). On test the metrics go into
    ``metrics.json``. See :mod:`lit_robust.flatness` for the measures.

    The input threat model (epsilon, step size, norm) is the module's (``hparams``). During fit the
    cost is set by ``examples``, ``samples``, ``steps`` and ``restarts``; the defaults keep it
    under a tenth of a training epoch of ``configs/digits/at.yaml`` (``benchmarks/flatness.py``
    prints the fraction) and are far below the paper's settings, which the ``test_*`` arguments
    default to (under ``fast_dev_run`` the test, too, uses the per-epoch settings). Under
    data-parallel training each process measures its share of the examples
    (:func:`~lit_robust.evaluation.shard`) and the sums are reduced over the processes, so one and
    several processes agree within sampling noise.

    The weights measured are those the module holds at validation time (see
    :class:`ScheduledMeasurement`), so with weight averaging it measures the averaged weights
    whatever the order of the callbacks. Its random numbers come from a forked generator seeded
    with ``seed`` (plus the process rank), so it neither changes the training's random stream nor
    varies from one measurement to the next by chance alone.

    Args:
        every_n_epochs: measure after every this many training epochs; 0 only on test.
        on_test: also measure on test (paper settings, into ``metrics.json``).
        measures: any of ``"avg_rloss"``, ``"worst_rloss"``, ``"avg_loss"``, ``"worst_loss"``.
        fit_splits: splits measured during fit, ``"eval"`` and/or ``"train"`` (suffix ``_train``).
        test_splits: splits measured on test.
        batch_size: examples per batch (per process); the weight perturbations are drawn, and the
            worst case is found, per batch (the paper: 128).
        examples: examples per split during fit (from the start of the split).
        samples: weight samples per batch of average-case flatness during fit.
        steps: during fit, PGD iterations of RLoss at perturbed weights and of the reference, and
            iterations of the worst-case ascent.
        restarts: during fit, restarts of the reference PGD and of the worst-case ascent.
        test_examples: examples per split on test (the paper: 1000).
        test_samples: weight samples per batch on test (10).
        test_steps: iterations on test (20).
        test_restarts: restarts on test (10).
        average_xi: xi of average-case flatness (0.5).
        worst_xi: xi of worst-case flatness (0.003).
        worst_lr: learning rate of the worst-case weight ascent (0.001).
        parallel: weight perturbations evaluated in one vectorised pass; 1 evaluates them one by
            one (least memory).
        seed: seed of the measurement's random numbers.

    Attributes:
        results: the latest :class:`~lit_robust.flatness.FlatnessResult` per metric name (with both
            terms and the number of examples), the same on every process.
    """

    def __init__(self, *, every_n_epochs: int = 1, on_test: bool = True, measures: Sequence[Measure] = MEASURES,
                 fit_splits: Sequence[Split] = ("eval",), test_splits: Sequence[Split] = SPLITS,
                 batch_size: int = 128, examples: int = 32, samples: int = 2, steps: int = 3, restarts: int = 1,
                 test_examples: int = 1000, test_samples: int = 10, test_steps: int = 20, test_restarts: int = 10,
                 average_xi: float = 0.5, worst_xi: float = 0.003, worst_lr: float = 0.001, parallel: int = 10,
                 seed: int = 0) -> None:
        super().__init__(every_n_epochs, on_test)
        check(len(measures) > 0, "measures", measures, "a non-empty list of " + ", ".join(MEASURES))
        for measure in measures:
            check_choice(measure, "measures", MEASURES)
        for split in list(fit_splits) + list(test_splits):
            check_choice(split, "fit_splits / test_splits", SPLITS)
        for name, value in (("batch_size", batch_size), ("examples", examples), ("steps", steps),
                            ("restarts", restarts), ("test_examples", test_examples), ("test_steps", test_steps),
                            ("test_restarts", test_restarts)):
            check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        self.measures = tuple(measures)
        self.fit_splits, self.test_splits = tuple(fit_splits), tuple(test_splits)
        self.batch_size = batch_size
        self.settings = {
            "fit": dict(examples=examples, samples=samples, steps=steps, restarts=restarts),
            "test": dict(examples=test_examples, samples=test_samples, steps=test_steps, restarts=test_restarts),
        }
        self.average_xi, self.worst_xi, self.worst_lr = average_xi, worst_xi, worst_lr
        self.parallel = parallel
        self.seed = seed
        # the checks of every remaining setting, now rather than at the first measurement
        for stage in self.settings:
            self._meter(stage, epsilon=1.0, step_size=1.0, norm="linf")
        self.results: Dict[str, FlatnessResult] = {}

    def _meter(self, stage: str, epsilon: float, step_size: float, norm: str) -> FlatnessMeasures:
        s = self.settings[stage]
        return FlatnessMeasures(epsilon=epsilon, step_size=step_size, norm=norm, reference_steps=s["steps"],
                                reference_restarts=s["restarts"], average_xi=self.average_xi, samples=s["samples"],
                                average_steps=s["steps"], average_restarts=1, worst_xi=self.worst_xi,
                                worst_iterations=s["steps"], worst_restarts=s["restarts"], worst_lr=self.worst_lr,
                                max_examples=None, parallel=self.parallel)

    @override
    def _measure(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is None:
            rank_zero_warn("FlatnessMonitor needs a data module with test_dataloader (and train_eval_dataloader); "
                           "nothing measured.")
            return
        # a fast_dev_run checks that everything runs, not the paper's numbers
        cost = "fit" if stage == "fit" or trainer.fast_dev_run else "test"
        hparams = pl_module.hparams
        meter = self._meter(cost, epsilon=hparams.get("epsilon", 8 / 255), step_size=hparams.get("step_size", 0.007),
                            norm=hparams.get("norm", "linf"))
        splits = self.fit_splits if stage == "fit" else self.test_splits
        metrics: Dict[str, float] = {}
        for split in splits:
            name = "test_dataloader" if split == "eval" else "train_eval_dataloader"
            loader_fn = getattr(datamodule, name, None)
            if loader_fn is None or (split == "eval" and not is_overridden(name, datamodule)):
                rank_zero_warn(f"FlatnessMonitor: {type(datamodule).__name__} has no {name}; the measures on "
                               f"the {split} split are skipped.")
                continue
            dataset = loader_fn().dataset
            first = Subset(dataset, range(min(self.settings[cost]["examples"], len(dataset))))
            batches = loader(shard(first, trainer.global_rank, trainer.world_size), self.batch_size)
            devices = [pl_module.device] if pl_module.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed + trainer.global_rank)
                results = meter(pl_module.model, batches, self.measures,
                                reduce=lambda t: trainer.strategy.reduce(t, reduce_op="sum"))
            suffix = "" if split == "eval" else "_train"
            for measure, result in results.items():
                self.results[f"flatness/{measure}{suffix}"] = result
                metrics[f"flatness/{measure}{suffix}"] = result.flatness
                if measure.startswith("avg"):
                    metrics[f"flatness/{measure}_std{suffix}"] = result.std
        for name, value in metrics.items():
            # already reduced over the processes; sync_dist only averages equal values
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        if stage == "test" and metrics:
            rank_zero_info("Flatness: " + ", ".join(f"{k.split('/')[1]}={v:.4f}" for k, v in metrics.items()))
