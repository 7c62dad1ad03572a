"""AdversarialModule: the LightningModule every adversarial-training variant subclasses.

It holds the network, the training attack and the evaluation attacks, and owns validation and
test as the paper's protocol (Stutz et al. 2021, supplement Sec. F): validation = clean + PGD on the held-out split
(``val/err``, ``val/loss``, ``val/rerr``, ``val/rloss``); test = clean + PGD-20 with 10 restarts,
worst case per example, on the evaluation split (``test/err``, ``test/loss``, ``test/rerr_pgd``,
``test/rloss_pgd``), the same on the train-eval split (suffix ``_train``), and optionally the
official AutoAttack (``test/rerr_aa``). ``train.py`` writes the test metrics, and whatever callbacks
logged on test (flatness), to ``metrics.json`` in the run's log directory
(:class:`~lit_robust.callbacks.metrics_file.MetricsFile`).

Variants override :meth:`training_step` with their own inner maximisation and outer loss and return
:func:`step_output` (the loss, the adversarial logits and the labels); what every variant shares acts
by construction in the base class's hooks: the training metrics (:meth:`~AdversarialModule.log_training`
from ``on_train_batch_end``), the L1 penalty (``on_after_backward``) and the stop on a non-finite loss
(``on_before_backward``).
"""

import dataclasses
import logging
import os
import sys
from typing import Any, Dict, Literal, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lit_robust.attacks import (
    PAPER_EPSILON,
    PAPER_STEP_SIZE,
    PGD,
    Norm,
    ThreatModel,
    check_step_size,
    check_threat_model,
)
from lit_robust.attacks.evaluation import AutoAttackVersion, autoattack_wrong, clean_and_robust, evaluate
from lit_robust.attacks.sanity import check_gradient_masking, check_input_range
from lit_robust.data.batches import DEFAULT_BATCH_KEYS, FirstExamples, inputs_and_targets
from lit_robust.errors import check, check_choice
from lit_robust.inference_mode import require_gradients
from lit_robust.metric_names import TEST, TEST_RERR_AA, TRAIN, TRAIN_STEP, VAL
from lit_robust.models.normalize import Normalize
from lit_robust.modules.checkpoint_contents import checkpoint_class_path, class_path, random_states, set_random_states
from lit_robust.weights import select_parameters

log = logging.getLogger(__name__)


def step_output(loss: Tensor, adversarial_logits: Tensor, y: Tensor) -> Dict[str, Tensor]:
    """What every variant's ``training_step`` returns: the objective ``loss`` (Lightning minimises it) and,
    for the training metrics that :meth:`AdversarialModule.log_training` logs, the ``adversarial_logits`` of
    the training adversarial examples and their labels ``y``."""
    return {"loss": loss, "adversarial_logits": adversarial_logits, "y": y}


def paper_sgd(params) -> torch.optim.Optimizer:
    """The paper's optimiser (Stutz et al. 2021, supplement Sec. F): SGD, learning rate 0.05, momentum 0.9, weight
    decay 5e-3."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-3)


class AdversarialModule(LightningModule):
    """Network + attacks + the paper's validation and test protocol.

    Args:
        model: the network; takes [0, 1] images and returns logits.
        optimizer: optimiser factory (LightningCLI's ``optimizer``); default the paper's SGD.
        lr_scheduler: learning-rate scheduler factory (LightningCLI's ``lr_scheduler``).
        lr_scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"`` (cyclic).
        epsilon: radius of the threat model (8/255 on CIFAR-10).
        step_size: PGD step size (0.007 in the paper).
        norm: threat model, ``"linf"`` or ``"l2"``.
        train_steps: PGD iterations for training (7).
        val_steps: PGD iterations on the held-out split (7, as the paper's early stopping).
        val_restarts: PGD restarts on the held-out split (5, as the paper's early stopping).
        test_steps: PGD iterations for test (20).
        test_restarts: PGD restarts for test (10), worst case per example.
        test_on_train: also evaluate the train-eval split on test (metrics with suffix ``_train``).
        autoattack: also run AutoAttack on test (``test/rerr_aa``).
        autoattack_version: AutoAttack version (``"standard"`` in the paper).
        train_epsilon: epsilon of the training attack when it differs from the evaluation epsilon
            (Stutz et al. 2021, supplement Table D, "larger epsilon": train at 9/255, evaluate at 8/255).
        l1_penalty: weight lambda of the L1 norm of the weights added to the training objective (Yan et al. 2022,
            Table 4: 5e-6), as its gradient after every backward pass (:meth:`on_after_backward`); 0 turns it off.
        predict_adversarial: ``predict`` also gives the labels predicted on the test attack's adversarial
            examples (``adversarial_labels``; needs labelled batches).
        compile: compile the network with ``torch.compile`` in :meth:`configure_model` (in place, so
            parameter names and checkpoints are unchanged); the attacks take their input gradients
            through the compiled network.
        batch_keys: the keys of the inputs and the labels in dict batches (the batch contract of
            :mod:`lit_robust.data.batches`: a tuple or list batch gives its first two elements, ``(x, y, index)``
            included); the callbacks read them from the module.
        log_every_step: also log every training step's ``loss``, ``rloss`` and ``rerr`` as ``train_step/...``
            (the epoch's means, ``train/...``, are always logged).
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerCallable = paper_sgd,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
                 epsilon: float = PAPER_EPSILON, step_size: float = PAPER_STEP_SIZE, norm: Norm = "linf",
                 train_steps: int = 7,
                 val_steps: int = 7, val_restarts: int = 5, test_steps: int = 20, test_restarts: int = 10,
                 test_on_train: bool = True, autoattack: bool = False,
                 autoattack_version: AutoAttackVersion = "standard", train_epsilon: Optional[float] = None,
                 l1_penalty: float = 0.0, predict_adversarial: bool = False, compile: bool = False,
                 batch_keys: Tuple[str, str] = DEFAULT_BATCH_KEYS, log_every_step: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        check(isinstance(model, nn.Module), "model", type(model).__name__, "an nn.Module")
        check(callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer), "optimizer",
              type(optimizer).__name__, "a factory of the optimiser, called with the parameters (e.g. "
              "functools.partial(torch.optim.SGD, lr=0.05)), not an optimiser built already")
        built = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        check(lr_scheduler is None or (callable(lr_scheduler) and not isinstance(lr_scheduler, built)), "lr_scheduler",
              type(lr_scheduler).__name__, "a factory of the scheduler, called with the optimiser (e.g. "
              "functools.partial(torch.optim.lr_scheduler.StepLR, step_size=30)), or null")
        check(l1_penalty >= 0, "l1_penalty", l1_penalty, "a number >= 0")
        check_choice(norm, "norm", ("linf", "l2"))
        check_threat_model(epsilon, norm)
        if train_epsilon is not None:
            check_threat_model(train_epsilon, norm, "train_epsilon")
        check_step_size(step_size, min(epsilon, train_epsilon or epsilon))
        for name, value in (("train_steps", train_steps), ("val_steps", val_steps), ("val_restarts", val_restarts),
                            ("test_steps", test_steps), ("test_restarts", test_restarts)):
            check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        check(len(batch_keys) == 2 and all(isinstance(key, str) for key in batch_keys)
              and batch_keys[0] != batch_keys[1], "batch_keys", batch_keys,
              "two different keys, of the inputs and of the labels in dict batches (e.g. [image, label])")
        self.batch_keys: Tuple[str, str] = (batch_keys[0], batch_keys[1])
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_attack = self.make_train_attack()
        self.val_attack = PGD(**self.attack_arguments(self.threat_model, val_steps), restarts=val_restarts)
        self.test_attack = PGD(**self.attack_arguments(self.threat_model, test_steps), restarts=test_restarts)
        self.val_metrics = nn.ModuleDict({name: MeanMetric() for name in ("err", "loss", "rerr", "rloss")})
        self.test_metrics = nn.ModuleDict({name: MeanMetric() for name in ("err", "loss", "rerr_pgd", "rloss_pgd",
                                                                           "rerr_aa")})

    @override
    def configure_model(self) -> None:
        """Compile the network in place when ``compile`` is set (``nn.Module.compile``: same parameters)."""
        if self.hparams.get("compile", False):
            self.model.compile()

    @property
    def threat_model(self) -> ThreatModel:
        """The threat model of evaluation (``epsilon``, ``step_size``, ``norm``): the validation and test attacks',
        AutoAttack's and that of every callback that attacks."""
        h = self.hparams
        return ThreatModel(h.epsilon, h.step_size, h.norm)

    @property
    def training_epsilon(self) -> float:
        """Epsilon of the training attack: ``train_epsilon`` where given, else ``epsilon``."""
        return self.hparams.train_epsilon or self.hparams.epsilon

    @property
    def train_threat_model(self) -> ThreatModel:
        """The threat model of the training attack: :attr:`threat_model` with :attr:`training_epsilon`."""
        return dataclasses.replace(self.threat_model, epsilon=self.training_epsilon)

    @staticmethod
    def attack_arguments(threat_model: ThreatModel, steps: int) -> Dict[str, Any]:
        """The arguments every PGD of a module shares: the threat model's and the number of iterations."""
        return dict(epsilon=threat_model.epsilon, step_size=threat_model.step_size, steps=steps,
                    norm=threat_model.norm)

    def train_attack_arguments(self) -> Dict[str, Any]:
        """The arguments of every training PGD: :attr:`train_threat_model` and ``train_steps`` iterations."""
        return self.attack_arguments(self.train_threat_model, self.hparams.train_steps)

    def make_train_attack(self) -> PGD:
        """The training attack: PGD on cross-entropy, last iterate (Madry et al.); variants override."""
        return PGD(**self.train_attack_arguments(), keep_best=False)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @override
    def on_train_batch_end(self, outputs: Optional[Mapping[str, Any]], batch: Any, batch_idx: int) -> None:
        """Log the training metrics from what :meth:`training_step` returned (see :meth:`log_training`): one
        place for every variant, so that no variant has to remember it."""
        if outputs is not None:
            self.log_training(outputs)

    def log_training(self, outputs: Mapping[str, Any]) -> None:
        """Log ``train/loss`` (the objective), ``train/rloss`` and ``train/rerr`` on the training adversarial
        examples: the epoch's means under these names, with ``log_every_step`` each step's values as
        ``train_step/loss`` etc.

        Args:
            outputs: what :meth:`training_step` returned, a :func:`step_output` dictionary: ``loss`` (the
                objective), ``adversarial_logits`` (the logits of the training adversarial examples) and ``y``
                (their labels). Under automatic optimisation Lightning hands ``loss`` on divided by
                ``accumulate_grad_batches``; the objective itself is logged.
        """
        missing = {"loss", "adversarial_logits", "y"} - set(outputs)
        if missing:
            raise TypeError(f"{type(self).__name__}.training_step must return step_output(loss, adversarial_logits, "
                            f"y) (a dictionary with loss, adversarial_logits and y); {sorted(missing)} missing")
        loss = outputs["loss"].detach()
        accumulated = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        if self.automatic_optimization and accumulated > 1:
            loss = loss * accumulated
        adversarial_logits, y = outputs["adversarial_logits"].detach(), outputs["y"]
        with torch.no_grad():
            rloss = F.cross_entropy(adversarial_logits.float(), y)
            rerr = (adversarial_logits.argmax(dim=1) != y).float().mean()
        values = {"loss": loss, "rloss": rloss, "rerr": rerr}
        # the epoch's means under the plain names (train/loss), each step's values beside them (train_step/loss) when
        # asked for
        self.log_dict({f"{TRAIN}{name}": value for name, value in values.items()}, on_step=False, on_epoch=True)
        if self.hparams.get("log_every_step", False):
            self.log_dict({f"{TRAIN_STEP}{name}": value for name, value in values.items()}, on_step=True,
                          on_epoch=False)

    @override
    def on_after_backward(self) -> None:
        """Add the gradient of ``l1_penalty * sum_l ||w_l||_1``, ``l1_penalty * sign(w)``, to the gradients of the
        weights of convolutional and linear layers (no biases, no batch normalisation): the L1 regularisation
        (Rice et al. 2020; Yan et al. 2022, Table 4). Every backward pass, automatic or manual, ends here, so that the
        penalty acts for every variant. The gradient is scaled as the loss was: by the mixed-precision loss
        scale, and by 1 / accumulate_grad_batches under automatic optimisation."""
        if self.hparams.l1_penalty == 0:
            return
        scale = self.hparams.l1_penalty
        if self.automatic_optimization:
            scale /= self.trainer.accumulate_grad_batches
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            scale *= float(scaler.get_scale())
        with torch.no_grad():
            for _, weight in select_parameters(self.model, "weights"):
                penalty = scale * weight.sign()
                weight.grad = penalty if weight.grad is None else weight.grad.add_(penalty)

    def inputs_and_targets(self, batch: Any, labelled: bool = True) -> Tuple[Any, Optional[Tensor]]:
        """``(x, y)`` of ``batch`` by the batch contract (:func:`lit_robust.data.batches.inputs_and_targets`, with
        :attr:`batch_keys`): every step of every variant reads its batch here."""
        return inputs_and_targets(batch, self.batch_keys, labelled)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self.inputs_and_targets(batch)
        for name, values in clean_and_robust(self.model, x, y, self.val_attack).items():
            self.val_metrics[name].update(values)
            self.log(f"{VAL}{name}", self.val_metrics[name], on_epoch=True, prog_bar=name == "rerr")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self.inputs_and_targets(batch)
        values = clean_and_robust(self.model, x, y, self.test_attack)
        for name, key in (("err", "err"), ("loss", "loss"), ("rerr", "rerr_pgd"), ("rloss", "rloss_pgd")):
            self.test_metrics[key].update(values[name])
            self.log(f"{TEST}{key}", self.test_metrics[key], on_epoch=True)
        if self.hparams.autoattack:
            broken = autoattack_wrong(self.model, x, y, self.threat_model.epsilon, self.threat_model.norm,
                                      self.hparams.autoattack_version)
            self.test_metrics["rerr_aa"].update(broken.float())
            self.log(TEST_RERR_AA, self.test_metrics["rerr_aa"], on_epoch=True)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Tensor]:
        """The predicted labels of a batch (``labels``), and with ``predict_adversarial`` those on the test
        attack's adversarial examples (``adversarial_labels``)."""
        x, y = self.inputs_and_targets(batch, labelled=False)
        with torch.no_grad():
            predictions = {"labels": self.model(x).argmax(dim=1)}
        if self.hparams.predict_adversarial:
            check(y is not None, "predict_adversarial", True,
                  "false for unlabelled batches (the attack needs labels)")
            x_adv = self.test_attack(self.model, x, y)
            with torch.no_grad():
                predictions["adversarial_labels"] = self.model(x_adv).argmax(dim=1)
        return predictions

    def check_network_fits_data(self, x: Optional[Tensor] = None) -> None:
        """Raise :class:`~lit_robust.errors.ConfigurationError` when the network does not fit the data: its
        output size (its ``num_classes``, which every network of :mod:`lit_robust.models` has) differs from
        the data module's ``num_classes``; its first convolution takes another number of channels than the
        images ``x``; its input normalisation (:class:`~lit_robust.models.normalize.
        Normalize`) has another number of channels than the images ``x``; or its mean and standard
        deviation differ from those the data module states (``mean`` / ``std``). What a network or data
        module does not state is not checked."""
        datamodule = getattr(self.trainer, "datamodule", None)
        expected, given = getattr(datamodule, "num_classes", None), getattr(self.model, "num_classes", None)
        if expected is not None and given is not None:
            check(int(given) == int(expected), "model.num_classes", given,
                  f"the data module's num_classes, {expected} ({type(datamodule).__name__})")
        first_convolution = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_convolution is not None and x is not None and x.dim() == 4:
            check(first_convolution.in_channels == x.shape[1], "model.in_channels", first_convolution.in_channels,
                  f"the number of channels of the images, {x.shape[1]} (the input channels of the network's first "
                  f"convolution)")
        normalize = next((m for m in self.model.modules() if isinstance(m, Normalize)), None)
        if normalize is None:
            return
        mean, std = normalize.mean.flatten().tolist(), normalize.std.flatten().tolist()
        if x is not None and x.dim() == 4:
            check(len(mean) in (1, x.shape[1]), "model.mean", mean,
                  f"one value per channel of the images, {x.shape[1]} (or a single value)")
        for name, value in (("mean", mean), ("std", std)):
            stated = getattr(datamodule, name, None)
            if stated is not None and len(stated) == len(value):
                check(all(abs(a - b) < 1e-3 for a, b in zip(value, stated)), f"model.{name}",
                      [round(v, 4) for v in value],
                      f"the data module's {name}, {list(stated)} ({type(datamodule).__name__}): the network's "
                      f"normalisation must be that of the data")

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            x, _ = self.inputs_and_targets(batch)
            views = list(x) if isinstance(x, (list, tuple)) else [x]  # one or several views
            self.check_network_fits_data(views[0])
            check_input_range(views)

    @override
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            x, _ = self.inputs_and_targets(batch)
            self.check_network_fits_data(x)
            check_input_range(x)

    @override
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            x, y = self.inputs_and_targets(batch)
            self.check_network_fits_data(x)
            check_input_range(x)
            require_gradients("attacks")
            check_gradient_masking(self.model, x, y)

    @override
    def on_test_epoch_end(self) -> None:
        """With ``test_on_train``, the test protocol on the data module's ``train_eval_dataloader``: every example
        as that loader yields it (its ``collate_fn``, workers and batch size), this process's share under DDP."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.hparams.test_on_train or datamodule is None or not hasattr(datamodule, "train_eval_dataloader"):
            return
        batches = FirstExamples(datamodule.train_eval_dataloader(), rank=self.global_rank,
                                world_size=self.trainer.world_size, keys=self.batch_keys)
        totals = evaluate(self.model, batches, self.test_attack, self.device)
        totals = {name: self.trainer.strategy.reduce(value, reduce_op="sum") for name, value in totals.items()}
        count = totals.pop("count")
        names = {"err": "err_train", "loss": "loss_train", "rerr": "rerr_pgd_train", "rloss": "rloss_pgd_train"}
        self.log_dict({f"{TEST}{names[k]}": v / count for k, v in totals.items()}, sync_dist=False)

    @override
    def on_before_backward(self, loss: Tensor) -> None:
        """Stop at once on a non-finite training loss: before the backward pass, so that neither the
        weights nor any checkpoint (ModelCheckpoint saves in ``on_train_batch_end``) sees the step; the
        decision is combined across processes, so that all of them stop at the same step."""
        self.stop_unless_finite(bool(torch.isfinite(loss.detach()).all()), f"non-finite training loss "
                                f"({float(loss.detach())})", "training stopped before this update")

    @override
    def on_validation_epoch_end(self) -> None:
        """Stop on a non-finite validation loss or non-finite weights, before a checkpoint callback saves
        them (ModelCheckpoint saves in ``on_validation_end``)."""
        if self.trainer.sanity_checking:
            return
        self.stop_unless_finite(self.weights_are_finite(), "non-finite weights", "training stopped")
        if not self.val_metrics["loss"].update_count:  # a subclass validates its own way
            return
        loss = self.val_metrics["loss"].compute()
        self.stop_unless_finite(bool(torch.isfinite(loss).all()), f"non-finite validation loss ({float(loss)})",
                                "training stopped")

    def weights_are_finite(self) -> bool:
        """Whether every floating-point tensor of the module's state is finite."""
        return all(bool(torch.isfinite(value).all()) for value in self.state_dict().values()
                   if torch.is_floating_point(value))

    def stop_unless_finite(self, finite: bool, what: str, consequence: str) -> None:
        """Raise :class:`FloatingPointError` naming ``what``, the epoch, the step and the last good checkpoint
        unless ``finite`` holds on every process."""
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            last = self.last_checkpoint()
            raise FloatingPointError(
                f"{what} at epoch {self.current_epoch}, global step {self.global_step}; {consequence}. Last good "
                f"checkpoint (kept): {last or 'none was written yet'}.")

    def last_checkpoint(self) -> Optional[str]:
        """The checkpoint file the trainer's checkpoint callbacks wrote last, or ``None``."""
        paths = [path for callback in self.trainer.checkpoint_callbacks
                 for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
                 if path and os.path.isfile(path)]
        return max(paths, key=os.path.getmtime, default=None)

    @override
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Keep the random number generators' states, so that a resumed run draws the same batches and
        random starts as an uninterrupted one; refuse to save non-finite weights."""
        checkpoint["random_states"] = random_states()
        checkpoint["module_class"] = class_path(type(self))  # the class load_from_checkpoint builds
        # no checkpoint with non-finite weights is ever written (nor named as the last good one)
        finite = all(bool(torch.isfinite(value).all()) for value in checkpoint["state_dict"].values()
                     if torch.is_floating_point(value))
        if not finite:
            raise FloatingPointError(
                f"non-finite weights at epoch {self.current_epoch}, global step {self.global_step}; training "
                f"stopped and no checkpoint written. Last good checkpoint (kept): "
                f"{self.last_checkpoint() or 'none was written yet'}.")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: Optional[bool] = None, weights_only: Optional[bool] = None, **kwargs: Any):
        """Lightning's ``load_from_checkpoint``, building the class the checkpoint names
        (:func:`checkpoint_class_path`): ``AdversarialModule.load_from_checkpoint`` of a PGDAT checkpoint returns
        a ``PGDAT``. A class that is not the checkpoint's nor one of its bases (``TRADES`` for a ``PGDAT``
        checkpoint), a named class that is not imported, or ``AdversarialModule`` itself for a checkpoint naming
        no class, raise :class:`~lit_robust.errors.ConfigurationError`."""
        named = None
        if isinstance(checkpoint_path, (str, os.PathLike)) and os.path.isfile(checkpoint_path):
            named = checkpoint_class_path(torch.load(checkpoint_path, map_location="cpu",
                                                     weights_only=weights_only is not False))
        if named is None:
            check(cls is not AdversarialModule, "checkpoint_path", str(checkpoint_path),
                  "a checkpoint naming its module class when loaded with AdversarialModule (the base class has no "
                  "training step): call the variant's load_from_checkpoint, e.g. PGDAT.load_from_checkpoint")
        else:
            module, _, name = named.rpartition(".")
            target = getattr(sys.modules.get(module), name, None)  # only what is imported: no code from a file
            if target is None and name == cls.__qualname__:
                target = cls  # a class of a script (__main__) loaded where it is imported from a module
            check(isinstance(target, type) and issubclass(target, cls), "checkpoint_path", str(checkpoint_path),
                  f"a checkpoint of {class_path(cls)} or of a subclass of it; it names {named}"
                  + ("" if isinstance(target, type) else " (not imported)"))
            if target is not cls:
                return target.load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only,
                                                   **kwargs)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only,
                                            **kwargs)

    @override
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Restore the random number generators' states when a trainer resumes fitting from ``checkpoint``."""
        if self._trainer is not None and self.trainer.state.fn == "fit" and "random_states" in checkpoint:
            set_random_states(checkpoint["random_states"])

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer),
                                                         "interval": self.hparams.lr_scheduler_interval}}
