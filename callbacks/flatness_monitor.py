"""Average- and worst-case flatness in RLoss and Loss (Stutz et al. 2021, supplement Sec. D) and any other
registered measure, logged during training and on test."""

from typing import Dict, List, Literal, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden
from typing_extensions import override

from lit_robust.attacks import Norm, ThreatModel
from lit_robust.data.batches import DEFAULT_BATCH_KEYS, FirstExamples
from lit_robust.errors import check, check_choice
from lit_robust.measures import Measure, MeasureResult, measure_named, registered, registered_names
from lit_robust.measures.flatness import MEASURES, FlatnessMeasures
from lit_robust.measures.settings import PAPER_SETTINGS, FlatnessSettings
from lit_robust.metric_names import FLATNESS
from lit_robust.module_contract import NetworkSetting, network_of, threat_model_for

from .scheduled_measurement import ScheduledMeasurement

Split = Literal["eval", "train"]
SPLITS = ("eval", "train")
ALL_MEASURES = MEASURES + tuple(name for name in registered_names() if name not in MEASURES)
"""The library's measures by name: the paper's four, then those beyond it."""
EXTRA_MEASURES = tuple(name for name in ALL_MEASURES if name not in MEASURES)
CLEAN_ONLY = ThreatModel(1.0, 1.0, "linf")
"""The threat model of a monitor of clean measures alone on a module without one: no attack of it ever runs."""
__all__ = ["FlatnessMonitor", "FlatnessSettings", "PAPER_SETTINGS", "ALL_MEASURES", "EXTRA_MEASURES"]


class FlatnessMonitor(ScheduledMeasurement):
    """Log the paper's four flatness measures, and any of the measures beyond it, every few epochs and on test.

    Metric names (docs/architecture.md): ``flatness/avg_rloss``, ``flatness/worst_rloss``,
    ``flatness/avg_loss``, ``flatness/worst_loss`` on the evaluation split (the data module's
    ``test_dataloader``, the paper's first 1000 test images) and the same with suffix ``_train`` on
    the train-eval split (the first training images, Stutz et al. 2021, supplement Fig. D middle left); for the
    average-case measures also their standard deviation over the weight samples,
    ``flatness/avg_rloss_std`` etc. (Stutz et al. 2021, supplement Fig. D left). On test the metrics go into
    ``metrics.json``. See :mod:`lit_robust.measures` for the measures.

    Any measure registered by name (:func:`~lit_robust.measures.register_measure`, also one defined
    outside the library) or given as an instance of a :class:`~lit_robust.measures.Measure` (in YAML
    ``class_path`` / ``init_args``, with its own settings, which then hold for fit and test alike) is
    logged as ``flatness/<name>`` (with ``_train`` on the train-eval split); an unknown name is refused
    at construction with the registered names. The library's measures beyond the paper's, by name;
    ``rloss`` / ``rerr`` in a name means the robust loss / error under the module's threat model,
    ``loss`` / ``err`` the clean one:

    - ``adaptive_avg_rloss``, ``adaptive_avg_loss``: average-case adaptive sharpness, radius
      ``adaptive_rho``, ``adaptive_samples`` Gaussian draws per batch (:mod:`lit_robust.measures.sharpness`);
    - ``adaptive_worst_rloss_l2``, ``adaptive_worst_rloss_linf``, ``adaptive_worst_loss_l2``,
      ``adaptive_worst_loss_linf``: worst-case adaptive sharpness for p = 2 / inf, radius
      ``adaptive_rho_l2`` / ``adaptive_rho_linf``, ``ascent_iterations`` ascent iterations;
    - ``relative_rloss``, ``relative_loss``: relative flatness of the last linear layer
      (:mod:`lit_robust.measures.relative_flatness`), ``hutchinson_samples`` probes;
    - ``pac_bayes_rerr``, ``pac_bayes_err`` (plain) and ``pac_bayes_mag_rerr``, ``pac_bayes_mag_err``
      (magnitude-aware): 1/sigma'^2 of PAC-Bayes flatness (:mod:`lit_robust.measures.pac_bayes`);
    - ``hessian_trace_rloss``, ``hessian_trace_loss``: Tr(H) by Hutchinson's estimator
      (:mod:`lit_robust.measures.hessian_trace`), ``hutchinson_samples`` probes;
    - ``lambda_max_rloss``, ``lambda_max_loss``: the largest Hessian eigenvalue by power iteration
      (:mod:`lit_robust.measures.hessian_max_eigenvalue`).

    RLoss at perturbed weights and adversarial examples of the Hessian measures use PGD with
    ``pgd_steps`` iterations; references use ``pgd_restarts`` restarts.

    The input threat model is the module's (``threat_model``), or given as ``epsilon``, ``step_size`` and
    ``norm`` for a LightningModule without one; the network is the module's attribute ``network``
    (``model`` by default) or what a callable returns; both are checked at ``setup``. The measures
    see the data module's loaders as they yield batches (their ``collate_fn`` and workers; batches
    ``(x, y, ...)`` or dicts under the module's ``batch_keys``), the first ``examples`` examples, each
    batch checked against the [0, 1] input contract. The cost of the measures given by name is
    set by a :class:`FlatnessSettings` each for fit (``fit``) and test (``test``); in YAML
    ``fit: {examples: 32, samples: 2}`` (unset fields keep their defaults). The per-epoch defaults
    keep it under a tenth of a training epoch of ``configs/digits/at.yaml`` (``benchmarks/flatness.py``
    prints the fraction) and are far below the paper's settings, which ``test`` defaults to (under
    ``fast_dev_run`` the test, too, uses ``fit``). Under
    data-parallel training each process measures its share of the examples
    (:class:`~lit_robust.data.batches.FirstExamples`) and the sums are reduced over the processes, so one and
    several processes agree within sampling noise.

    The weights measured are those the module holds at validation time (see
    :class:`ScheduledMeasurement`), so with weight averaging it measures the averaged weights
    whatever the order of the callbacks. Its random numbers come from a forked generator seeded
    with ``seed`` (plus the process rank), so it neither changes the training's random stream nor
    varies from one measurement to the next by chance alone.

    Args:
        every_n_epochs: measure after every this many training epochs; 0 only on test.
        on_test: also measure on test (paper settings, into ``metrics.json``).
        measures: names of registered measures, ``"avg_rloss"``, ``"worst_rloss"``, ``"avg_loss"``,
            ``"worst_loss"`` (the paper's, the default) and those beyond it listed above, or
            :class:`~lit_robust.measures.Measure` instances.
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
        epsilon: radius of the input threat model for a module without ``threat_model`` (None: the module's).
        step_size: PGD step size for a module without ``threat_model`` (None: the module's).
        norm: ``"linf"`` or ``"l2"`` (None: the module's; L-inf for a module without a threat model).
        network: the module's attribute that holds the network, or a callable taking the module (``"model"``).

    Attributes:
        results: the latest :class:`~lit_robust.measures.MeasureResult` per metric name (with both
            terms and the number of examples), the same on every process.
    """

    def __init__(self, *, every_n_epochs: int = 1, on_test: bool = True,
                 measures: Sequence[Union[str, Measure]] = MEASURES, fit_splits: Sequence[Split] = ("eval",),
                 test_splits: Sequence[Split] = SPLITS, batch_size: int = 128,
                 fit: FlatnessSettings = FlatnessSettings(), test: FlatnessSettings = PAPER_SETTINGS,
                 average_xi: float = 0.5, worst_xi: float = 0.003, worst_lr: float = 0.001, parallel: int = 10,
                 seed: int = 0, adaptive_rho: float = 0.1, adaptive_rho_l2: float = 0.5,
                 adaptive_rho_linf: float = 0.002, pac_bayes_target: float = 0.1,
                 pac_bayes_search_depth: int = 15, pac_bayes_samples: int = 3, pac_bayes_epsilon: float = 1e-3,
                 epsilon: Optional[float] = None, step_size: Optional[float] = None, norm: Optional[Norm] = None,
                 network: NetworkSetting = "model") -> None:
        super().__init__(every_n_epochs, on_test)
        check(len(measures) > 0, "measures", measures, "a non-empty list of " + ", ".join(registered_names()))
        for measure in measures:
            if not isinstance(measure, Measure):
                check(isinstance(measure, str), "measures", measure,
                      "measure names or lit_robust.measures.Measure instances")
                registered(measure)
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
        check(norm is None or norm in ("linf", "l2"), "norm", norm, "'linf' or 'l2' (or None: the module's)")
        for split in list(fit_splits) + list(test_splits):
            check_choice(split, "fit_splits / test_splits", SPLITS)
        check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
        check(isinstance(network, str) or callable(network), "network", network,
              "the name of the module's attribute that holds the network, or a callable taking the module")
        self.measures = tuple(measures)
        self.fit_splits, self.test_splits = tuple(fit_splits), tuple(test_splits)
        self.batch_size = batch_size
        self.settings = {"fit": fit, "test": test}
        self.average_xi, self.worst_xi, self.worst_lr = average_xi, worst_xi, worst_lr
        self.parallel = parallel
        self.seed = seed
        self.options = dict(average_xi=average_xi, worst_xi=worst_xi, worst_lr=worst_lr, parallel=parallel,
                            adaptive_rho=adaptive_rho, adaptive_rho_l2=adaptive_rho_l2,
                            adaptive_rho_linf=adaptive_rho_linf, pac_bayes_target=pac_bayes_target,
                            pac_bayes_search_depth=pac_bayes_search_depth, pac_bayes_samples=pac_bayes_samples,
                            pac_bayes_epsilon=pac_bayes_epsilon)
        self.epsilon, self.step_size, self.norm, self.network = epsilon, step_size, norm, network
        self._threat_model: Optional[ThreatModel] = None
        # the checks of every remaining setting, now rather than at the first measurement
        self._built = {stage: self._build(stage) for stage in self.settings}
        for stage in self.settings:
            self._meter(stage, epsilon=1.0, step_size=1.0, norm="linf")
        self.results: Dict[str, MeasureResult] = {}

    def _build(self, stage: str) -> List[Measure]:
        """The measures, those given by name at the cost of ``stage``."""
        return [m if isinstance(m, Measure) else measure_named(m, self.settings[stage], self.options)
                for m in self.measures]

    def _meter(self, stage: str, epsilon: float, step_size: float, norm: str) -> FlatnessMeasures:
        """The paper's four measures given by name, measured together (one reference RLoss per batch)."""
        s = self.settings[stage]
        return FlatnessMeasures(epsilon=epsilon, step_size=step_size, norm=norm, reference_pgd_steps=s.pgd_steps,
                                reference_pgd_restarts=s.pgd_restarts, average_xi=self.average_xi, samples=s.samples,
                                average_pgd_steps=s.pgd_steps, average_pgd_restarts=1, worst_xi=self.worst_xi,
                                ascent_iterations=s.ascent_iterations, ascent_restarts=s.ascent_restarts,
                                worst_lr=self.worst_lr, max_examples=None, parallel=self.parallel)

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        network_of(pl_module, self.network, "FlatnessMonitor")
        if any(m.robust for m in self._built["test"]) or isinstance(getattr(pl_module, "threat_model", None),
                                                                    ThreatModel):
            self._threat_model = threat_model_for(pl_module, self.epsilon, self.step_size, self.norm,
                                                  "FlatnessMonitor")
        else:
            self._threat_model = CLEAN_ONLY

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
        threat_model = self._threat_model or threat_model_for(pl_module, self.epsilon, self.step_size, self.norm,
                                                              "FlatnessMonitor")
        model = network_of(pl_module, self.network, "FlatnessMonitor")
        meter = self._meter(cost, threat_model.epsilon, threat_model.step_size, threat_model.norm)
        paper = tuple(m for m in self.measures if isinstance(m, str) and m in MEASURES)
        others = [m.with_threat_model(threat_model) for m, given in zip(self._built[cost], self.measures)
                  if not (isinstance(given, str) and given in MEASURES)]
        keys = getattr(pl_module, "batch_keys", DEFAULT_BATCH_KEYS)
        splits = self.fit_splits if stage == "fit" else self.test_splits
        metrics: Dict[str, float] = {}
        for split in splits:
            name = "test_dataloader" if split == "eval" else "train_eval_dataloader"
            loader_fn = getattr(datamodule, name, None)
            if loader_fn is None or (split == "eval" and not is_overridden(name, datamodule)):
                rank_zero_warn(f"FlatnessMonitor: {type(datamodule).__name__} has no {name}; the measures on "
                               f"the {split} split are skipped.")
                continue
            batches = FirstExamples(loader_fn(), self.settings[cost].examples, trainer.global_rank,
                                    trainer.world_size, self.batch_size, keys)
            devices = [pl_module.device] if pl_module.device.type == "cuda" else []
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed + trainer.global_rank)
                results = meter(model, batches, paper, reduce=reduce) if paper else {}
                for measure in others:
                    # the same random numbers on every process, afresh per measure: probe vectors and noise
                    # drawn once for all examples are then shared, and one and several processes agree
                    # exactly in clean loss
                    generator = torch.Generator().manual_seed(self.seed)
                    results[measure.name] = measure(model, batches, reduce, generator)
            suffix = "" if split == "eval" else "_train"
            for measure, result in results.items():
                self.results[f"{FLATNESS}{measure}{suffix}"] = result
                metrics[f"{FLATNESS}{measure}{suffix}"] = result.flatness
                if measure in ("avg_rloss", "avg_loss"):
                    metrics[f"{FLATNESS}{measure}_std{suffix}"] = result.std
        for name, value in metrics.items():
            # already reduced over the processes; sync_dist only averages equal values
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        if stage == "test" and metrics:
            rank_zero_info("Flatness: " + ", ".join(f"{k.split('/')[1]}={v:.4f}" for k, v in metrics.items()))
