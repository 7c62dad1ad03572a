"""Adversarial-training variants, one LightningModule per file."""

from lit_robust.modules.amp import AMP
from lit_robust.modules.awp import AWP
from lit_robust.modules.base import AdversarialModule
from lit_robust.modules.consistency import Consistency
from lit_robust.modules.entropy_sgd import EntropySGD
from lit_robust.modules.fast_at import FastAT
from lit_robust.modules.friendly_at import FriendlyAT
from lit_robust.modules.hat import HAT
from lit_robust.modules.kd_swa import KDSWA
from lit_robust.modules.mart import MART
from lit_robust.modules.pgd_at import PGDAT
from lit_robust.modules.rotation import RotationSelfSupervised
from lit_robust.modules.sam import SAM
from lit_robust.modules.standard import StandardTraining
from lit_robust.modules.temporal_ensembling import TemporalEnsembling
from lit_robust.modules.trades import TRADES
from lit_robust.modules.unlabeled_at import UnlabeledAT

__all__ = ["AMP", "AWP", "AdversarialModule", "EntropySGD", "FastAT", "FriendlyAT", "MART", "PGDAT",
           "RotationSelfSupervised", "StandardTraining", "TRADES", "UnlabeledAT",
           "KDSWA", "TemporalEnsembling", "Consistency", "SAM", "HAT"]
