"""Adversarial-training variants, one LightningModule per file."""

from lit_robust.modules.base import AdversarialModule
from lit_robust.modules.pgd_at import PGDAT

__all__ = ["AdversarialModule", "PGDAT"]
