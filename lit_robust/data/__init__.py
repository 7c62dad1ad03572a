"""Data modules with the four loaders of the project: train, held-out, evaluation, train-eval."""

from lit_robust.data.base import AdversarialDataModule
from lit_robust.data.digits import DigitsDataModule
from lit_robust.data.indexed import IndexedDataset, with_example_indices
from lit_robust.data.pseudo_labeled import PseudoLabeledDataModule
from lit_robust.data.vision import CIFAR10DataModule, CIFAR100DataModule, MNISTDataModule, SVHNDataModule

__all__ = ["AdversarialDataModule", "CIFAR10DataModule", "CIFAR100DataModule", "DigitsDataModule", "IndexedDataset",
           "MNISTDataModule", "PseudoLabeledDataModule", "SVHNDataModule", "with_example_indices"]
