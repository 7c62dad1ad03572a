"""RLoss landscapes and Hessian eigenvalues as TensorBoard figures and PNG files.

Stutz et al. 2021, supplement Sec. C and Table A.
"""

import os
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_robust.attacks import PGD, Norm, ThreatModel
from lit_robust.attacks.sanity import check_input_range
from lit_robust.data.batches import DEFAULT_BATCH_KEYS, FirstExamples
from lit_robust.errors import check, check_choice
from lit_robust.measures.base import LossKind
from lit_robust.measures.landscape import (
    DirectionKind,
    Landscape,
    Normalization,
    adversarial_directions,
    hessian_max_eigenvalue,
    input_hessian_max_eigenvalue,
    landscape_1d,
    landscape_2d,
    plot_landscapes,
    plot_surface,
    random_directions,
)
from lit_robust.metric_names import FLATNESS_INPUT_LAMBDA_MAX, FLATNESS_LAMBDA_MAX, LANDSCAPE
from lit_robust.module_contract import NetworkSetting, network_of, threat_model_for
from lit_robust.weights import names_and_weights, normalize_direction

from .scheduled_measurement import ScheduledMeasurement

KINDS = ("random", "adversarial", "hessian")


class LandscapeMonitor(ScheduledMeasurement):
    """Plot the loss landscape of the current weights on one batch of the evaluation split.

    Along random directions (mean over them, per-layer length ``random_length``), adversarial
    directions (maximum over them, length ``adversarial_length``) and the eigenvector of the
    Hessian's largest eigenvalue (length ``hessian_length``, Stutz et al. 2021, supplement Fig. A), RLoss by PGD with
    ``attack_steps`` iterations at ``steps`` points in [-1, 1]; optionally a 2-D surface over two
    random directions. The defaults are the paper's (Stutz et al. 2021, supplement Sec. C: 10 directions, 51 steps, one
    batch of 128 test examples, PGD-20), which costs many training epochs of a small model, so by
    default it runs only on test. See :mod:`lit_robust.measures.landscape`.

    The figures go to TensorBoard (``landscape/1d_<stage>``, ``landscape/2d_<stage>``, stage ``fit``
    or ``test``) and, with ``png``, to ``<log_dir>/landscapes/<stage>_epoch=<epoch>_<1d|2d>.png``.
    It also logs ``flatness/lambda_max``, the largest eigenvalue of the clean loss's Hessian in
    weight space (Stutz et al. 2021, supplement Table A), and ``flatness/input_lambda_max``, the mean over the batch of
    the largest eigenvalue of the input Hessian (Singla et al. 2021, Fig. 3). Only the process of rank 0
    measures; the weights are those of validation (see
    :class:`~lit_robust.callbacks.scheduled_measurement.ScheduledMeasurement`). The input threat model is the
    module's, or ``epsilon``, ``step_size`` and ``norm`` for a module without one; the network is the module's
    attribute ``network`` or what a callable returns; both are checked at ``setup``. The batch is the first
    ``examples`` examples as the data module's ``test_dataloader`` yields them (its ``collate_fn``; batches
    ``(x, y, ...)`` or dicts under the module's ``batch_keys``), checked against the [0, 1] input contract.

    Args:
        every_n_epochs: during fit, after every this many epochs; 0 only on test.
        on_test: also on test.
        kinds: directions to plot, any of ``"random"``, ``"adversarial"``, ``"hessian"``.
        directions: directions per kind (10).
        steps: points in [-1, 1] (51).
        examples: examples of the batch, from the start of the evaluation split (128).
        loss: ``"rloss"`` (PGD at every point) or ``"loss"`` (clean).
        attack_steps: PGD iterations at every point (20).
        normalization: ``"layer"`` (Stutz et al. 2021, supplement Eq. 2) or ``"filter"`` (Li et al., Eq. 1).
        random_length: per-layer length of random directions (0.5).
        adversarial_length: per-layer length of adversarial directions (0.025).
        hessian_length: per-layer length of the Hessian direction (0.5).
        adversarial_xi: neighbourhood of the ascent that finds adversarial directions (0.003).
        adversarial_iterations: iterations of that ascent (20).
        adversarial_lr: its learning rate (0.001).
        surface: also a 2-D surface over two random directions.
        surface_steps: points per axis of the surface.
        hessian: log ``flatness/lambda_max``.
        input_hessian: log ``flatness/input_lambda_max``.
        hessian_iterations: power iterations at most.
        png: also write PNG files.
        parallel: weight perturbations per vectorised pass; 1 one by one.
        seed: seed of the random directions and attacks (a forked generator; training is unaffected).
        epsilon: radius of the input threat model for a module without ``threat_model`` (None: the module's).
        step_size: PGD step size for a module without ``threat_model`` (None: the module's).
        norm: ``"linf"`` or ``"l2"`` (None: the module's; L-inf for a module without a threat model).
        network: the module's attribute that holds the network, or a callable taking the module (``"model"``).
    """

    def __init__(self, *, every_n_epochs: int = 0, on_test: bool = True,
                 kinds: Sequence[DirectionKind] = ("random", "adversarial"), directions: int = 10, steps: int = 51,
                 examples: int = 128, loss: LossKind = "rloss", attack_steps: int = 20,
                 normalization: Normalization = "layer", random_length: float = 0.5,
                 adversarial_length: float = 0.025, hessian_length: float = 0.5, adversarial_xi: float = 0.003,
                 adversarial_iterations: int = 20, adversarial_lr: float = 0.001, surface: bool = False,
                 surface_steps: int = 21, hessian: bool = True, input_hessian: bool = True,
                 hessian_iterations: int = 100, png: bool = True, parallel: int = 10, seed: int = 0,
                 epsilon: Optional[float] = None, step_size: Optional[float] = None, norm: Optional[Norm] = None,
                 network: NetworkSetting = "model") -> None:
        super().__init__(every_n_epochs, on_test)
        for kind in kinds:
            check_choice(kind, "kinds", KINDS)
        check_choice(loss, "loss", ("rloss", "loss"))
        check_choice(normalization, "normalization", ("layer", "filter"))
        for name, value in (("directions", directions), ("examples", examples), ("attack_steps", attack_steps),
                            ("adversarial_iterations", adversarial_iterations),
                            ("hessian_iterations", hessian_iterations), ("parallel", parallel)):
            check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        for name, value in (("steps", steps), ("surface_steps", surface_steps)):
            check(isinstance(value, int) and value >= 2, name, value, "an integer >= 2")
        for name, value in (("random_length", random_length), ("adversarial_length", adversarial_length),
                            ("hessian_length", hessian_length), ("adversarial_xi", adversarial_xi),
                            ("adversarial_lr", adversarial_lr)):
            check(value > 0, name, value, "a number > 0")
        self.kinds, self.directions, self.steps, self.examples = tuple(kinds), directions, steps, examples
        self.loss, self.attack_steps, self.normalization = loss, attack_steps, normalization
        self.lengths = {"random": random_length, "adversarial": adversarial_length, "hessian": hessian_length}
        self.adversarial_xi, self.adversarial_iterations, self.adversarial_lr = (
            adversarial_xi, adversarial_iterations, adversarial_lr)
        self.surface, self.surface_steps = surface, surface_steps
        self.hessian, self.input_hessian, self.hessian_iterations = hessian, input_hessian, hessian_iterations
        self.png, self.parallel, self.seed = png, parallel, seed
        check(norm is None or norm in ("linf", "l2"), "norm", norm, "'linf' or 'l2' (or None: the module's)")
        check(isinstance(network, str) or callable(network), "network", network,
              "the name of the module's attribute that holds the network, or a callable taking the module")
        self.epsilon, self.step_size, self.norm, self.network = epsilon, step_size, norm, network
        self._threat_model: Optional[ThreatModel] = None

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        network_of(pl_module, self.network, "LandscapeMonitor")
        if self.loss == "rloss":
            self._threat_model = threat_model_for(pl_module, self.epsilon, self.step_size, self.norm,
                                                  "LandscapeMonitor with loss='rloss'")

    @override
    def _measure(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero:
            return
        if datamodule is None:
            rank_zero_warn("LandscapeMonitor needs a data module with test_dataloader; nothing measured.")
            return
        keys = getattr(pl_module, "batch_keys", DEFAULT_BATCH_KEYS)
        x, y = next(iter(FirstExamples(datamodule.test_dataloader(), self.examples, batch_size=self.examples,
                                       keys=keys)))
        check_input_range(x)
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            landscapes, surface, scalars = self._landscapes(pl_module, x, y)
        for name, value in scalars.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, rank_zero_only=True, batch_size=1)
        ylabel = "RLoss" if self.loss == "rloss" else "Loss"
        figures = {"1d": plot_landscapes(landscapes, ylabel)} if landscapes else {}
        if surface is not None:
            figures["2d"] = plot_surface(surface, ylabel)
        self._write(trainer, figures, stage)
        if stage == "test":
            rank_zero_info("Landscape: " + ", ".join(f"{landscape.kind} {ylabel} at -1, 0, 1: "
                                                     f"{landscape.curve[0]:.3f}, "
                                                     f"{landscape.curve[len(landscape.curve) // 2]:.3f}, "
                                                     f"{landscape.curve[-1]:.3f}" for landscape in landscapes))

    def _landscapes(self, pl_module: "pl.LightningModule", x: torch.Tensor, y: torch.Tensor):
        model = network_of(pl_module, self.network, "LandscapeMonitor")
        attack = None
        if self.loss == "rloss":
            threat_model = self._threat_model or threat_model_for(pl_module, self.epsilon, self.step_size, self.norm,
                                                                  "LandscapeMonitor with loss='rloss'")
            attack = PGD(threat_model.epsilon, threat_model.step_size, self.attack_steps, norm=threat_model.norm)
        _, weights = names_and_weights(model)
        scalars: Dict[str, float] = {}
        eigenpair = None
        if self.hessian or "hessian" in self.kinds:
            eigenpair = hessian_max_eigenvalue(model, x, y, iterations=self.hessian_iterations)
            scalars[FLATNESS_LAMBDA_MAX] = eigenpair.value
        if self.input_hessian:
            scalars[FLATNESS_INPUT_LAMBDA_MAX] = float(
                input_hessian_max_eigenvalue(model, x, y, iterations=self.hessian_iterations).mean())
        directions: Dict[str, List] = {}
        if "random" in self.kinds or self.surface:
            directions["random"] = random_directions(weights, max(self.directions, 2 if self.surface else 1),
                                                     self.lengths["random"], self.normalization)
        if "adversarial" in self.kinds:
            directions["adversarial"] = adversarial_directions(
                model, x, y, attack, self.directions, self.lengths["adversarial"], self.adversarial_xi,
                self.adversarial_iterations, self.adversarial_lr, self.normalization, parallel=self.parallel)
        if "hessian" in self.kinds:
            directions["hessian"] = [normalize_direction(eigenpair.vector, weights, per=self.normalization,
                                                         scale=self.lengths["hessian"])]
        landscapes: List[Landscape] = [
            landscape_1d(model, x, y, directions[kind][:self.directions], attack, kind=kind, steps=self.steps,
                         parallel=self.parallel)
            for kind in self.kinds]
        surface = None
        if self.surface:
            surface = landscape_2d(model, x, y, directions["random"][0], directions["random"][1], attack,
                                   steps=self.surface_steps, parallel=self.parallel)
        return landscapes, surface, scalars

    def _write(self, trainer: "pl.Trainer", figures: Dict[str, Any], stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, figure in figures.items():
                    logger.experiment.add_figure(f"{LANDSCAPE}{name}_{stage}", figure, global_step=trainer.global_step,
                                                 close=False)
        if self.png:
            directory = os.path.join(trainer.log_dir or trainer.default_root_dir, "landscapes")
            os.makedirs(directory, exist_ok=True)
            for name, figure in figures.items():
                figure.savefig(os.path.join(directory, f"{stage}_epoch={trainer.current_epoch}_{name}.png"), dpi=100)
