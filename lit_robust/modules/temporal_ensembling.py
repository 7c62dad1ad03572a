"""Adversarial training with temporal ensembling (Dong et al. ICLR 2022, "Exploring memorization in adversarial
training")."""

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lit_robust.attacks import PGD, restore_modes
from lit_robust.data.indexed import with_example_indices
from lit_robust.errors import check
from lit_robust.metric_names import TRAIN
from lit_robust.modules.base import AdversarialModule, step_output


def ensemble_penalty(logits: Tensor, ensemble_targets: Tensor) -> Tensor:
    """``sum_k (softmax(logits)_k - p~_k)^2 / K`` per example: the squared distance to the ensemble
    prediction, averaged over the K classes."""
    return (F.softmax(logits.float(), dim=1) - ensemble_targets).pow(2).mean(dim=1)


class TemporalEnsemblePGD(PGD):
    """PGD on ``CE(f(x + delta), y) + w * ensemble_penalty(f(x + delta), p~)`` (Dong et al., official code:
    the attack maximises the training objective, ensemble term included). Before each call the
    module sets :attr:`ensemble` to ``(p~, w)``; ``None`` attacks the cross-entropy alone."""

    ensemble: Optional[Tuple[Tensor, float]] = None

    def objective(self, logits: Tensor, y: Tensor, clean_logits: Optional[Tensor]) -> Tensor:
        losses = super().objective(logits, y, clean_logits)
        if self.ensemble is None:
            return losses
        ensemble_targets, weight = self.ensemble
        return losses + weight * ensemble_penalty(logits, ensemble_targets)


class TemporalEnsembling(AdversarialModule):
    """PGD-AT with temporal ensembling (TE; Dong et al. ICLR 2022, its TE objective; Laine and Aila 2017):

    p_bar(x_i) <- alpha p_bar(x_i) + (1 - alpha) softmax(f(x_i)) whenever example i is in a batch,
    p~(x_i) = p_bar(x_i) / sum_k p_bar_k(x_i) (bias correction of the zero start),

    min_w E[max_delta CE(f(x + delta), y) + w(t) * ||softmax(f(x + delta)) - p~(x)||^2 / K]

    with w(t) = weight * exp(-5 (1 - (t - t_0) / (t_1 - t_0))^2) for t_0 <= t <= t_1 (the sigmoid-shaped
    ramp-up of Laine and Aila), 0 before t_0 (plain PGD-AT, no ensemble update) and ``weight`` after.
    softmax(f(x)) is the clean prediction in eval mode without gradients.

    The paper's text is not among the project's papers: the objective and its defaults are the
    official code's (``train_te.py``, ``loss.py``), which the paper's method description follows.

    Defaults are the official code's (dongyp13/memorization-AT, ``train_te.py``): alpha = 0.9,
    weight = 300, ramp-up over epochs 90 to 150 of 200 (1-based there; ``start_epoch = 89`` and
    ``end_epoch = 149`` 0-based here, the same epochs). As there, the penalty is also part of the
    PGD objective (per example, so the gradient of each example is the official batch mean's), and
    the penalty is the mean over batch and classes of the squared difference.

    The ensemble p_bar (one row per training example, indexed by the example's index, which the
    training loader gives because :meth:`setup` wraps the data module's ``train_set`` in
    :class:`~lit_robust.data.IndexedDataset`) is kept out of the module's registered state (weight
    averaging does not average it) and saved in checkpoints under ``"temporal_ensemble"``, so a
    resumed run continues exactly. In DDP every process gathers the indices and predictions of all
    processes at each update, so that every process holds the whole, identical ensemble (the
    official code runs on one GPU); an example that the distributed sampler repeats to pad a
    process's shard takes one of its predictions.

    Per training step with PGD-K, from ``start_epoch`` on: one clean forward pass without gradients,
    K forward and K input-only backward passes for the attack, one forward and one full backward pass
    (PGD-7: 9 forward, 7 input-only backward, 1 full backward); before ``start_epoch`` PGD-AT's (8, 7, 1).

    Args:
        momentum: alpha, the momentum of the ensemble prediction (0.9).
        weight: the weight of the ensemble term after the ramp-up (300).
        start_epoch: t_0, first epoch (0-based) of the ensemble and of the ramp-up (89).
        end_epoch: t_1, epoch (0-based) where the ramp-up reaches ``weight`` (149).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, momentum: float = 0.9, weight: float = 300.0, start_epoch: int = 89,
                 end_epoch: int = 149, **kwargs: Any) -> None:
        check(0.0 <= momentum < 1.0, "momentum", momentum, "a number in [0, 1) (the paper: 0.9)")
        check(weight >= 0, "weight", weight, "a number >= 0 (the paper: 300)")
        check(isinstance(start_epoch, int) and start_epoch >= 0, "start_epoch", start_epoch, "an integer >= 0")
        check(isinstance(end_epoch, int) and end_epoch > start_epoch, "end_epoch", end_epoch,
              f"an integer > start_epoch = {start_epoch}")
        super().__init__(*args, **kwargs)
        self.ensemble_predictions: Optional[Tensor] = None

    def make_train_attack(self) -> TemporalEnsemblePGD:
        """PGD-K from a uniform start, last iterate, on CE plus the ensemble term."""
        return TemporalEnsemblePGD(**self.train_attack_arguments(), keep_best=False)

    def ensemble_weight(self, epoch: int) -> float:
        """w(t) of the ramp-up at the 0-based ``epoch``."""
        h = self.hparams
        if epoch < h.start_epoch:
            return 0.0
        if epoch > h.end_epoch:
            return h.weight
        phase = 1.0 - (epoch - h.start_epoch) / (h.end_epoch - h.start_epoch)
        return h.weight * math.exp(-5.0 * phase * phase)

    @override
    def setup(self, stage: str) -> None:
        """Make the training loader give example indices, and start the ensemble at zero."""
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        num_examples = with_example_indices(datamodule)
        if self.ensemble_predictions is None or len(self.ensemble_predictions) != num_examples:
            self.ensemble_predictions = torch.zeros(num_examples, datamodule.num_classes)

    def update_ensemble(self, x: Tensor, index: Tensor) -> Tensor:
        """Fold the clean predictions of the batch into the ensemble (all processes' batches); p~ of the batch."""
        with torch.no_grad(), restore_modes(self.model, False):
            probabilities = F.softmax(self.model(x).float(), dim=1)
        if self.ensemble_predictions is None:
            raise RuntimeError("TemporalEnsembling needs its setup('fit'): train it with a Trainer and a data module.")
        self.ensemble_predictions = self.ensemble_predictions.to(x.device)
        all_index, all_probabilities = index, probabilities
        if self._trainer is not None and self.trainer.world_size > 1:
            all_index = self.all_gather(index).flatten(0, 1)
            all_probabilities = self.all_gather(probabilities).flatten(0, 1)
        alpha = self.hparams.momentum
        self.ensemble_predictions[all_index] = (alpha * self.ensemble_predictions[all_index]
                                                + (1 - alpha) * all_probabilities)
        rows = self.ensemble_predictions[index]
        return rows / rows.sum(dim=1, keepdim=True)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        index = batch.get("index") if isinstance(batch, Mapping) else (batch[2] if len(batch) == 3 else None)
        if index is None:
            raise RuntimeError("TemporalEnsembling needs batches (x, y, index) (or dict batches with an 'index'): "
                               "train it with a data module of this library, whose train_set its setup wraps in "
                               "IndexedDataset.")
        weight = self.ensemble_weight(self.current_epoch)
        ensemble_targets = self.update_ensemble(x, index) if weight > 0 else None
        # inner maximisation: PGD on CE + w * ensemble term
        self.train_attack.ensemble = None if ensemble_targets is None else (ensemble_targets, weight)
        try:
            x_adv = self.train_attack(self.model, x, y)
        finally:
            self.train_attack.ensemble = None
        # outer minimisation: CE + w(t) * ensemble term
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        if ensemble_targets is not None:
            loss = loss + weight * ensemble_penalty(logits, ensemble_targets).mean()
        self.log(TRAIN + "te_weight", weight, on_step=False, on_epoch=True)
        return step_output(loss, logits, y)

    @override
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Also keep the ensemble prediction of every training example."""
        super().on_save_checkpoint(checkpoint)
        if self.ensemble_predictions is not None:
            checkpoint["temporal_ensemble"] = self.ensemble_predictions.detach().cpu().clone()

    @override
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Restore the ensemble where the checkpoint has one."""
        super().on_load_checkpoint(checkpoint)
        if "temporal_ensemble" in checkpoint:
            self.ensemble_predictions = checkpoint["temporal_ensemble"].clone()
