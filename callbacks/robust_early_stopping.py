"""Early stopping on the PGD robust error (or robust loss) of the held-out split.

Stutz et al. 2021, supplement Sec. F.
"""

import math
import os
from typing import Any, Dict, Literal, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lit_robust.attacks import PGD, Norm
from lit_robust.attacks.evaluation import clean_and_robust
from lit_robust.data.batches import DEFAULT_BATCH_KEYS, inputs_and_targets
from lit_robust.errors import check, check_choice
from lit_robust.metric_names import EARLY_STOPPING, EARLY_STOPPING_BEST_EPOCH, VAL
from lit_robust.module_contract import NetworkSetting, network_of, threat_model_for

from .callback_schedule import (
    check_epoch_reached,
    check_validation_runs,
    first_common_epoch,
    warn_unless_scheduled,
)

Monitor = Literal["rerr", "rloss"]


class RobustEarlyStopping(Callback):
    """Keep the weights with the lowest held-out robust error (or loss); optionally stop and restore them.

    Every ``every_n_epochs`` epochs the robust error (RErr: misclassified or successfully attacked)
    of the current weights on the held-out split is measured with PGD, by default PGD-7 with 5
    random restarts, the attack of the paper's early stopping ("we save snapshots every 5 epochs to
    perform early stopping ... 7 iterations PGD ... with 5 random restarts", Stutz et al. 2021, supplement Sec. F).
    The paper picks the best snapshot after training; this callback keeps the best weights so far
    in one checkpoint file, which is the same choice.

    ``monitor="rloss"`` selects the weights by the held-out robust loss (cross-entropy on the PGD
    examples) instead. Where robust overfitting shows in the loss more than in the error (the loss
    keeps rising on confidently misclassified examples while the error barely moves, as on the
    embedded digits recipe), the robust loss picks the epoch that the error cannot tell apart.

    The measurement is made during the trainer's validation (the data module's
    ``val_dataloader``, the held-out split), so it sees what validation sees, e.g. the averaged
    weights of :class:`~lit_robust.callbacks.weight_averaging.WeightAveraging`:

    * when the module's ``val_attack`` is this very attack (an
      :class:`~lit_robust.modules.base.AdversarialModule` with ``val_steps``, ``val_restarts``,
      ``epsilon``, ``step_size`` and ``norm`` equal to this callback's), its ``val/rerr`` (or
      ``val/rloss``) is reused
      and the held-out split is attacked only once;
    * otherwise the callback attacks every validation batch itself (``clean_and_robust`` on the module's
      network, its ``network`` attribute) and sums across processes.

    On a LightningModule of one's own (not an ``AdversarialModule``), ``network`` names the attribute that
    holds the network (or is a callable taking the module), and ``epsilon`` and ``step_size`` give the threat
    model (``norm`` defaults to L-inf); the batches follow the batch contract (:mod:`lit_robust.data.batches`,
    dict keys from the module's ``batch_keys`` where it has them). Everything missing is named in one error
    at ``setup``, before the first batch.

    It logs ``early_stopping/<monitor>`` (this evaluation), ``early_stopping/best_<monitor>`` and
    ``early_stopping/best_epoch`` (``early_stopping/best_epoch_rloss`` for the robust loss, so that one
    instance per monitor can run together; also on test, so ``metrics.json`` has them), and writes the best
    weights with ``trainer.save_checkpoint`` to ``<dirpath>/<filename>.ckpt``, next to
    ModelCheckpoint's files by default; ``ModelCheckpoint(monitor="early_stopping/rerr")`` works
    as well. Every decision is combined across processes.

    Under ``ddp_spawn`` the fit runs on copies of the callbacks in spawned processes; this state comes back to
    the calling process only with :func:`lit_robust.cli.spawn_results.keep_callback_states` (``train.py`` calls it),
    without which a later ``trainer.test`` would log none of it.

    Args:
        every_n_epochs: evaluate after every this many epochs (the paper: 5); a multiple of the
            trainer's ``check_val_every_n_epoch``, as the evaluation runs with validation.
        steps: PGD iterations (7).
        restarts: PGD random restarts, worst case per example (5).
        epsilon: radius of the threat model; default the module's ``threat_model``'s (needed for a module
            without one).
        step_size: PGD step size; default the module's ``threat_model``'s (needed for a module without one).
        norm: threat model; default the module's ``threat_model``'s, else ``"linf"``.
        patience: stop training after this many evaluations without improvement; ``None``
            (default, as the paper) never stops.
        restore_best_weights: at the end of fit, load the best weights into the module, so that the
            test after fit reports the early-stopped model ("RErr (early stop)" of Stutz et al. 2021, supplement
            Table D).
        dirpath: directory of the best-weights checkpoint; default ModelCheckpoint's directory,
            else ``<log_dir>/checkpoints``.
        filename: name of the best-weights checkpoint, without ``.ckpt``.
        monitor: ``"rerr"`` (the paper's robust error, default) or ``"rloss"`` (robust loss).
        network: the module's attribute that holds the network (``"model"``), or a callable taking the module.
    """

    def __init__(self, every_n_epochs: int = 5, steps: int = 7, restarts: int = 5, epsilon: Optional[float] = None,
                 step_size: Optional[float] = None, norm: Optional[Norm] = None, patience: Optional[int] = None,
                 restore_best_weights: bool = False, dirpath: Optional[str] = None,
                 filename: str = "early_stopping", monitor: Monitor = "rerr",
                 network: NetworkSetting = "model") -> None:
        check_choice(monitor, "monitor", ("rerr", "rloss"))
        check(every_n_epochs >= 1, "every_n_epochs", every_n_epochs, "an integer >= 1")
        check(patience is None or patience >= 1, "patience", patience, "an integer >= 1 or null (never stop)")
        check(bool(filename) and os.sep not in filename, "filename", filename, "a file name without directory")
        # the attack's own checks of every given setting, now; what is left unset comes from the module in setup
        PGD(1.0 if epsilon is None else epsilon, (1.0 if epsilon is None else epsilon) if step_size is None
            else step_size, steps, restarts=restarts, norm=norm or "linf")
        check(callable(network) or (isinstance(network, str) and bool(network)), "network", network,
              "the name of the module's attribute that holds the network, or a callable taking the module")
        self.network = network
        self.monitor = monitor
        self.every_n_epochs = every_n_epochs
        self.steps = steps
        self.restarts = restarts
        self.epsilon = epsilon
        self.step_size = step_size
        self.norm = norm
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.dirpath = dirpath
        self.filename = filename
        self.attack: Optional[PGD] = None
        self.reuse_validation = False
        self.best_value = math.inf
        self.best_epoch = -1
        self.wait_count = 0
        self.best_model_path = ""
        self._sums = torch.zeros(2)  # robust errors (or losses) and examples of this validation, this process

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, every_n_epochs=self.every_n_epochs, steps=self.steps,
                                        restarts=self.restarts,
                                        epsilon=self.epsilon, step_size=self.step_size, norm=self.norm,
                                        filename=self.filename)

    def check_schedule(self, trainer: "pl.Trainer") -> None:
        """Refuse a fit in which this callback would never evaluate: without validation, or with its first
        evaluation (the first epoch that is a multiple of both ``every_n_epochs`` and the trainer's
        ``check_val_every_n_epoch``) after ``max_epochs`` (see :mod:`lit_robust.callbacks.callback_schedule`)."""
        every_validation = check_validation_runs(trainer, "RobustEarlyStopping", "evaluates")
        check_epoch_reached(trainer, "every_n_epochs", self.every_n_epochs,
                            first_common_epoch(self.every_n_epochs, every_validation), "RobustEarlyStopping",
                            "evaluates")

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        warn_unless_scheduled(self, trainer)
        threat_model = threat_model_for(pl_module, self.epsilon, self.step_size, self.norm, "RobustEarlyStopping")
        network_of(pl_module, self.network, "RobustEarlyStopping")
        self.attack = PGD(threat_model.epsilon, threat_model.step_size, self.steps, restarts=self.restarts,
                          norm=threat_model.norm)
        reference = getattr(pl_module, "val_attack", None)
        self.reuse_validation = type(reference) is PGD and vars(reference) == vars(self.attack)
        how = (f"reuses the module's val/{self.monitor}" if self.reuse_validation
               else "attacks the validation batches itself")
        rank_zero_info(f"RobustEarlyStopping: held-out {self.monitor} under {self.attack} every {self.every_n_epochs} "
                       f"epoch(s); {how}.")
        every_val = trainer.check_val_every_n_epoch
        if every_val and self.every_n_epochs % every_val:
            rank_zero_warn(f"RobustEarlyStopping evaluates during validation, which runs every {every_val} epochs: "
                           f"every_n_epochs={self.every_n_epochs} should be a multiple of it.")

    def _evaluates(self, trainer: "pl.Trainer") -> bool:
        return (self.attack is not None and not trainer.sanity_checking and trainer.state.fn == "fit"
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    @override
    def on_validation_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._sums = torch.zeros(2, device=pl_module.device)

    @override
    def on_validation_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Attack this held-out batch, unless the module's validation already did (Stutz et al. 2021, supplement
        Sec. F)."""
        if self.reuse_validation or dataloader_idx != 0 or not self._evaluates(trainer):
            return
        x, y = inputs_and_targets(batch, getattr(pl_module, "batch_keys", DEFAULT_BATCH_KEYS))
        network = network_of(pl_module, self.network, "RobustEarlyStopping")
        value = clean_and_robust(network, x, y, self.attack)[self.monitor].detach().float()
        self._sums += torch.stack([value.sum(), value.new_tensor(float(len(y)))])

    @override
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Keep the weights if their held-out RErr (RLoss) is the lowest so far; log; stop after
        ``patience`` evaluations without improvement (the early stopping of Stutz et al. 2021, supplement Sec. F)."""
        if not self._evaluates(trainer):
            return
        value = self._held_out_value(trainer)
        epoch = trainer.current_epoch
        improved = trainer.strategy.reduce_boolean_decision(value < self.best_value, all=True)
        if improved:
            self.best_value, self.best_epoch, self.wait_count = value, epoch, 0
            self.best_model_path = os.path.join(self._resolve_dirpath(trainer), f"{self.filename}.ckpt")
            trainer.save_checkpoint(self.best_model_path, weights_only=False)
        else:
            self.wait_count += 1
        metrics = {f"{EARLY_STOPPING}{self.monitor}": value, f"{EARLY_STOPPING}best_{self.monitor}": self.best_value,
                   self._best_epoch_name: float(self.best_epoch)}
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        rank_zero_info(f"Epoch {epoch}: held-out {self._name} {value:.4f}, best {self.best_value:.4f} at epoch "
                       f"{self.best_epoch} ({self.best_model_path}).")
        should_stop = self.patience is not None and self.wait_count >= self.patience
        if trainer.strategy.reduce_boolean_decision(should_stop, all=False):
            trainer.should_stop = True
            rank_zero_info(f"RobustEarlyStopping: no improvement in {self.wait_count} evaluations; stopping at "
                           f"epoch {epoch}.")

    @property
    def _best_epoch_name(self) -> str:
        # "early_stopping/best_epoch" for the paper's RErr; a name of its own for RLoss, so that both can run at once
        return EARLY_STOPPING_BEST_EPOCH + ("" if self.monitor == "rerr" else f"_{self.monitor}")

    @property
    def _name(self) -> str:
        return {"rerr": "robust error", "rloss": "robust loss"}[self.monitor]

    def _held_out_value(self, trainer: "pl.Trainer") -> float:
        """RErr (RLoss) of this validation: the module's ``val/rerr`` (``val/rloss``), or this callback's
        sums over all processes."""
        if self.reuse_validation:
            name = f"{VAL}{self.monitor}"
            if name not in trainer.callback_metrics:
                raise RuntimeError(f"RobustEarlyStopping expected the module to log {name} in validation.")
            return float(trainer.callback_metrics[name])
        total, count = trainer.strategy.reduce(self._sums, reduce_op="sum").tolist()
        return total / max(count, 1.0)

    def _resolve_dirpath(self, trainer: "pl.Trainer") -> str:
        if self.dirpath is not None:
            return self.dirpath
        checkpoint_callback = trainer.checkpoint_callback
        if checkpoint_callback is not None and checkpoint_callback.dirpath:
            return checkpoint_callback.dirpath
        return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")

    @override
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Load the best weights when ``restore_best_weights`` (after weight averaging's ``on_train_end``)."""
        if not self.restore_best_weights or not self.best_model_path:
            return
        checkpoint = torch.load(self.best_model_path, map_location=pl_module.device, weights_only=True)
        pl_module.load_state_dict(checkpoint["state_dict"])
        rank_zero_info(f"RobustEarlyStopping: restored the weights of epoch {self.best_epoch} (held-out "
                       f"{self._name} {self.best_value:.4f}) from {self.best_model_path}.")

    @override
    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.best_epoch >= 0:
            pl_module.log_dict({f"{EARLY_STOPPING}best_{self.monitor}": self.best_value,
                                self._best_epoch_name: float(self.best_epoch)}, sync_dist=True)

    @override
    def state_dict(self) -> Dict[str, Any]:
        return {f"best_{self.monitor}": self.best_value, "best_epoch": self.best_epoch,
                "wait_count": self.wait_count, "best_model_path": self.best_model_path}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.best_value = state_dict[f"best_{self.monitor}"]
        self.best_epoch = state_dict["best_epoch"]
        self.wait_count = state_dict["wait_count"]
        self.best_model_path = state_dict["best_model_path"]
