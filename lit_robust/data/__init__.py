"""Data modules with the four loaders of the project: train, held-out, evaluation, train-eval."""

from lit_robust.data.base import AdversarialDataModule
from lit_robust.data.digits import DigitsDataModule

__all__ = ["AdversarialDataModule", "DigitsDataModule"]
