"""Average- and worst-case flatness in RLoss and Loss (papers/001 Sec. D) and the sharpness measures beyond
the paper's, logged during training and on test."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import Subset
from typing_extensions import override

from lit_robust.adaptive_sharpness import adaptive_sharpness
from lit_robust.attacks import threat_model_of
from lit_robust.errors import check, check_choice
from lit_robust.evaluation import loader, shard
from lit_robust.flatness import MEASURES, FlatnessMeasures, FlatnessResult
from lit_robust.hessian_trace import hessian_trace
from lit_robust.pac_bayes import PacBayesResult, pac_bayes_flatness
from lit_robust.relative_flatness import relative_flatness

Split = Literal["eval", "train"]
SPLITS = ("eval", "train")
AnyMeasure = Literal["avg_rloss", "worst_rloss", "avg_loss", "worst_loss",
                     "adaptive_avg_rloss", "adaptive_avg_loss", "adaptive_worst_rloss_l2", "adaptive_worst_rloss_linf",
                     "adaptive_worst_loss_l2", "adaptive_worst_loss_linf", "relative_rloss", "relative_loss",
                     "pac_bayes_rerr", "pac_bayes_err", "pac_bayes_mag_rerr", "pac_bayes_mag_err",
                     "hessian_trace_rloss", "hessian_trace_loss"]
# the measures beyond the paper's (see FlatnessMonitor), in the order of AnyMeasure
EXTRA_MEASURES = AnyMeasure.__args__[len(MEASURES):]
ALL_MEASURES = MEASURES + EXTRA_MEASURES


@dataclass(frozen=True)
class FlatnessSettings:
    """What a flatness measurement costs: the settings that differ between per-epoch and test measurement.

    Frozen, so one instance can safely be a default. The defaults are the per-epoch ones of
    :class:`FlatnessMonitor`; :data:`PAPER_SETTINGS` holds the paper's (papers/001 Sec. D).

    Args:
        examples: examples per split, from the start of the split (the paper: 1000).
        samples: weight samples per batch of average-case flatness (10).
        pgd_steps: PGD iterations of RLoss, at perturbed weights (one restart) and of the reference
            RLoss(w); also of the adversarial examples of the measures beyond the paper's (20).
        pgd_restarts: PGD restarts of the reference RLoss(w), worst case per example (10).
        ascent_iterations: iterations of the worst-case joint ascent on nu and delta, and of the
            ascent of worst-case adaptive sharpness (20).
        ascent_restarts: restarts of the worst-case joint ascent, maximum taken per batch (10).
        adaptive_samples: Gaussian draws per batch of average-case adaptive sharpness (None: ``samples``).
        hutchinson_samples: probe vectors of relative flatness and the Hessian trace (100).
    """

    examples: int = 32
    samples: int = 2
    pgd_steps: int = 3
    pgd_restarts: int = 1
    ascent_iterations: int = 3
    ascent_restarts: int = 1
    adaptive_samples: Optional[int] = None
    hutchinson_samples: int = 10

    def check(self, stage: str) -> None:
        """Raise a ConfigurationError naming ``<stage>.<field>`` for the first setting that is not an integer >= 1."""
        for name in ("examples", "samples", "pgd_steps", "pgd_restarts", "ascent_iterations", "ascent_restarts",
                     "adaptive_samples", "hutchinson_samples"):
            value = getattr(self, name)
            if name == "adaptive_samples" and value is None:
                continue
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"{stage}.{name}", value,
                  "an integer >= 1" + (" or None (samples)" if name == "adaptive_samples" else ""))


# the paper's test settings (papers/001 Sec. D): 1000 examples, 10 samples, PGD-20 with 10 restarts, 20 ascent
# iterations with 10 restarts; 100 Hutchinson probes
PAPER_SETTINGS = FlatnessSettings(examples=1000, samples=10, pgd_steps=20, pgd_restarts=10, ascent_iterations=20,
                                  ascent_restarts=10, adaptive_samples=None, hutchinson_samples=100)


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
    """Log the paper's four flatness measures, and any of the measures beyond it, every few epochs and on test.

    Metric names (ARCHITECTURE.md): ``flatness/avg_rloss``, ``flatness/worst_rloss``,
    ``flatness/avg_loss``, ``flatness/worst_loss`` on the evaluation split (the data module's
    ``test_dataloader``, the paper's first 1000 test images) and the same with suffix ``_train`` on
    the train-eval split (the first training images, papers/001 Fig. D middle left); for the
    average-case measures also their standard deviation over the weight samples,
    ``flatness/avg_rloss_std`` etc. (papers/001 Fig. D left). On test the metrics go into
    ``metrics.json``. See :mod:`lit_robust.flatness` for the measures.

    The measures beyond the paper's, selected by name in ``measures`` and logged as
    ``flatness/<name>`` (with ``_train`` on the train-eval split); ``rloss`` / ``rerr`` in a name
    means the robust loss / error under the module's threat model, ``loss`` / ``err`` the clean one:

    - ``adaptive_avg_rloss``, ``adaptive_avg_loss``: average-case adaptive sharpness, radius
      ``adaptive_rho``, ``adaptive_samples`` Gaussian draws per batch (:mod:`lit_robust.adaptive_sharpness`);
    - ``adaptive_worst_rloss_l2``, ``adaptive_worst_rloss_linf``, ``adaptive_worst_loss_l2``,
      ``adaptive_worst_loss_linf``: worst-case adaptive sharpness for p = 2 / inf, radius
      ``adaptive_rho_l2`` / ``adaptive_rho_linf``, ``ascent_iterations`` ascent iterations;
    - ``relative_rloss``, ``relative_loss``: relative flatness of the last linear layer
      (:mod:`lit_robust.relative_flatness`), ``hutchinson_samples`` probes;
    - ``pac_bayes_rerr``, ``pac_bayes_err`` (plain) and ``pac_bayes_mag_rerr``, ``pac_bayes_mag_err``
      (magnitude-aware): 1/sigma'^2 of PAC-Bayes flatness (:mod:`lit_robust.pac_bayes`);
    - ``hessian_trace_rloss``, ``hessian_trace_loss``: Tr(H) by Hutchinson's estimator
      (:mod:`lit_robust.hessian_trace`), ``hutchinson_samples`` probes.

    RLoss at perturbed weights and adversarial examples of the Hessian measures use PGD with
    ``pgd_steps`` iterations; references use ``pgd_restarts`` restarts.

    The input threat model (epsilon, step size, norm) is the module's (``threat_model``). The cost is
    set by a :class:`FlatnessSettings` each for fit (``fit``) and test (``test``); in YAML
    ``fit: {examples: 32, samples: 2}`` (unset fields keep their defaults). The per-epoch defaults
    keep it under a tenth of a training epoch of ``configs/digits/at.yaml`` (``benchmarks/flatness.py``
    prints the fraction) and are far below the paper's settings, which ``test`` defaults to (under
    ``fast_dev_run`` the test, too, uses ``fit``). Under
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
        measures: any of ``"avg_rloss"``, ``"worst_rloss"``, ``"avg_loss"``, ``"worst_loss"`` (the paper's,
            the default) and the names of the measures beyond it listed above.
        fit_splits: splits measured during fit, ``"eval"`` and/or ``"train"`` (suffix ``_train``).
        test_splits: splits measured on test.
        batch_size: examples per batch (per process); the weight perturbations are drawn, and the
            worst case is found, per batch (the paper: 128).
        fit: the cost of the measurement during fit (:class:`FlatnessSettings`, by default 32 examples,
            2 samples, 3 PGD steps and ascent iterations, 1 restart, 10 Hutchinson probes).
        test: the cost on test (by default :data:`PAPER_SETTINGS`, 1000 examples, 10 samples, PGD-20
            with 10 restarts, 20 ascent iterations with 10 restarts, 100 Hutchinson probes).
        average_xi: xi of average-case flatness (0.5).
        worst_xi: xi of worst-case flatness (0.003).
        worst_lr: learning rate of the worst-case weight ascent (0.001).
        parallel: weight perturbations evaluated in one vectorised pass; 1 evaluates them one by
            one (least memory).
        seed: seed of the measurement's random numbers.
        adaptive_rho: radius of average-case adaptive sharpness (0.1).
        adaptive_rho_l2: radius of worst-case adaptive sharpness for p = 2 (0.5).
        adaptive_rho_linf: radius of worst-case adaptive sharpness for p = inf (0.002).
        pac_bayes_target: the deviation of the error PAC-Bayes flatness searches for (0.1).
        pac_bayes_search_depth: at most this many bisection steps (15).
        pac_bayes_samples: Monte-Carlo noise draws per bisection step (3).
        pac_bayes_epsilon: epsilon of the magnitude-aware noise (1e-3).

    Attributes:
        results: the latest :class:`~lit_robust.flatness.FlatnessResult` per metric name (with both
            terms and the number of examples), the same on every process.
    """

    def __init__(self, *, every_n_epochs: int = 1, on_test: bool = True, measures: Sequence[AnyMeasure] = MEASURES,
                 fit_splits: Sequence[Split] = ("eval",), test_splits: Sequence[Split] = SPLITS,
                 batch_size: int = 128, fit: FlatnessSettings = FlatnessSettings(),
                 test: FlatnessSettings = PAPER_SETTINGS, average_xi: float = 0.5, worst_xi: float = 0.003,
                 worst_lr: float = 0.001, parallel: int = 10,
                 seed: int = 0, adaptive_rho: float = 0.1, adaptive_rho_l2: float = 0.5,
                 adaptive_rho_linf: float = 0.002, pac_bayes_target: float = 0.1,
                 pac_bayes_search_depth: int = 15, pac_bayes_samples: int = 3, pac_bayes_epsilon: float = 1e-3) -> None:
        super().__init__(every_n_epochs, on_test)
        check(len(measures) > 0, "measures", measures, "a non-empty list of " + ", ".join(ALL_MEASURES))
        for measure in measures:
            check_choice(measure, "measures", ALL_MEASURES)
        for name, value in (("adaptive_rho", adaptive_rho), ("adaptive_rho_l2", adaptive_rho_l2),
                            ("adaptive_rho_linf", adaptive_rho_linf)):
            check(value > 0, name, value, "a number > 0 (radius of the weight perturbations)")
        for stage, settings in (("fit", fit), ("test", test)):
            check(isinstance(settings, FlatnessSettings), stage, settings, "a FlatnessSettings (in YAML a mapping)")
            settings.check(stage)
        for name, value in (("pac_bayes_search_depth", pac_bayes_search_depth),
                            ("pac_bayes_samples", pac_bayes_samples)):
            check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        check(0.01 < pac_bayes_target < 1, "pac_bayes_target", pac_bayes_target,
              "a number in (0.01, 1) (the search stops within 0.01 of it)")
        check(pac_bayes_epsilon >= 0, "pac_bayes_epsilon", pac_bayes_epsilon, "a number >= 0")
        self.adaptive_rho = {"avg": adaptive_rho, "l2": adaptive_rho_l2, "linf": adaptive_rho_linf}
        self.pac_bayes = dict(target=pac_bayes_target, search_depth=pac_bayes_search_depth,
                              samples=pac_bayes_samples, magnitude_epsilon=pac_bayes_epsilon)
        for split in list(fit_splits) + list(test_splits):
            check_choice(split, "fit_splits / test_splits", SPLITS)
        check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
        self.measures = tuple(measures)
        self.fit_splits, self.test_splits = tuple(fit_splits), tuple(test_splits)
        self.batch_size = batch_size
        self.settings = {"fit": fit, "test": test}
        self.average_xi, self.worst_xi, self.worst_lr = average_xi, worst_xi, worst_lr
        self.parallel = parallel
        self.seed = seed
        # the checks of every remaining setting, now rather than at the first measurement
        for stage in self.settings:
            self._meter(stage, epsilon=1.0, step_size=1.0, norm="linf")
        self.results: Dict[str, Union[FlatnessResult, PacBayesResult]] = {}

    def _meter(self, stage: str, epsilon: float, step_size: float, norm: str) -> FlatnessMeasures:
        s = self.settings[stage]
        return FlatnessMeasures(epsilon=epsilon, step_size=step_size, norm=norm, reference_pgd_steps=s.pgd_steps,
                                reference_pgd_restarts=s.pgd_restarts, average_xi=self.average_xi, samples=s.samples,
                                average_pgd_steps=s.pgd_steps, average_pgd_restarts=1, worst_xi=self.worst_xi,
                                ascent_iterations=s.ascent_iterations, ascent_restarts=s.ascent_restarts,
                                worst_lr=self.worst_lr, max_examples=None, parallel=self.parallel)

    def _extra(self, measure: str, stage: str, attack: Dict[str, Any]) -> Callable[..., Any]:
        """The measure beyond the paper's called ``measure``, as ``f(model, batches, reduce, generator)``."""
        s = self.settings[stage]
        parts = measure.split("_")
        if measure.startswith("adaptive_"):
            case = "average" if parts[1] == "avg" else "worst"
            p = "inf" if measure.endswith("linf") else "2"
            rho = self.adaptive_rho["avg" if case == "average" else ("linf" if p == "inf" else "l2")]
            return lambda model, batches, reduce, generator: adaptive_sharpness(
                model, batches, case=case, loss=parts[2], rho=rho, p=p,
                samples=s.samples if s.adaptive_samples is None else s.adaptive_samples,
                iterations=s.ascent_iterations, steps=s.pgd_steps, reference_steps=s.pgd_steps,
                reference_restarts=s.pgd_restarts,
                max_examples=None, parallel=self.parallel, reduce=reduce, generator=generator, **attack)
        if measure.startswith("pac_bayes_"):
            return lambda model, batches, reduce, generator: pac_bayes_flatness(
                model, batches, error=parts[-1], magnitude_aware=parts[2] == "mag", steps=s.pgd_steps,
                max_examples=None, reduce=reduce, generator=generator, **self.pac_bayes, **attack)
        function = relative_flatness if measure.startswith("relative_") else hessian_trace
        return lambda model, batches, reduce, generator: function(
            model, batches, loss=parts[-1], samples=s.hutchinson_samples, steps=s.pgd_steps, max_examples=None,
            reduce=reduce, generator=generator, **attack)

    def test_metrics(self, pl_module: "pl.LightningModule") -> List[str]:
        """The names this callback logs on test (the HParams session's metrics): each measure on each test split."""
        if not self.on_test:
            return []
        return [f"flatness/{measure}{'' if split == 'eval' else '_train'}"
                for split in self.test_splits for measure in self.measures]

    @override
    def _measure(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is None:
            rank_zero_warn("FlatnessMonitor needs a data module with test_dataloader (and train_eval_dataloader); "
                           "nothing measured.")
            return
        # a fast_dev_run checks that everything runs, not the paper's numbers
        cost = "fit" if stage == "fit" or trainer.fast_dev_run else "test"
        threat_model = threat_model_of(pl_module, "FlatnessMonitor")
        attack = dict(epsilon=threat_model.epsilon, step_size=threat_model.step_size, norm=threat_model.norm)
        meter = self._meter(cost, **attack)
        paper = tuple(m for m in self.measures if m in MEASURES)
        extras = {m: self._extra(m, cost, attack) for m in self.measures if m not in MEASURES}
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
            first = Subset(dataset, range(min(self.settings[cost].examples, len(dataset))))
            batches = loader(shard(first, trainer.global_rank, trainer.world_size), self.batch_size)
            devices = [pl_module.device] if pl_module.device.type == "cuda" else []
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed + trainer.global_rank)
                results = meter(pl_module.model, batches, paper, reduce=reduce) if paper else {}
                for measure, function in extras.items():
                    # the same random numbers on every process, afresh per measure: probe vectors and noise
                    # drawn once for all examples are then shared, and one and several processes agree
                    # exactly in clean loss
                    generator = torch.Generator().manual_seed(self.seed)
                    results[measure] = function(pl_module.model, batches, reduce, generator)
            suffix = "" if split == "eval" else "_train"
            for measure, result in results.items():
                self.results[f"flatness/{measure}{suffix}"] = result
                metrics[f"flatness/{measure}{suffix}"] = result.flatness
                if measure in ("avg_rloss", "avg_loss"):
                    metrics[f"flatness/{measure}_std{suffix}"] = result.std
        for name, value in metrics.items():
            # already reduced over the processes; sync_dist only averages equal values
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        if stage == "test" and metrics:
            rank_zero_info("Flatness: " + ", ".join(f"{k.split('/')[1]}={v:.4f}" for k, v in metrics.items()))
