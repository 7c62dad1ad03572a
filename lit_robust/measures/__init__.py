"""The flatness and sharpness measures, one class per measure on one base class, selectable by name.

Each file holds one measure (class and its functional twin, the class called once); importing the package
imports every file in it, which registers the library's measures under the names
:class:`~lit_robust.callbacks.FlatnessMonitor` reads.
"""

import importlib
import pkgutil

from lit_robust.measures.average_case import AverageCaseFlatness, average_case_flatness
from lit_robust.measures.base import LossKind, Measure, MeasureResult, Reduce
from lit_robust.measures.hessian_trace import HessianTrace, hessian_trace
from lit_robust.measures.pac_bayes import PacBayesFlatness, pac_bayes_flatness
from lit_robust.measures.registry import measure_named, register_measure, registered, registered_names
from lit_robust.measures.relative_flatness import RelativeFlatness, relative_flatness
from lit_robust.measures.sharpness import Sharpness, adaptive_sharpness, sharpness
from lit_robust.measures.worst_case import WorstCaseFlatness, worst_case_flatness

__all__ = ["AverageCaseFlatness", "HessianTrace", "LossKind", "Measure", "MeasureResult", "PacBayesFlatness",
           "Reduce", "RelativeFlatness", "Sharpness", "WorstCaseFlatness", "adaptive_sharpness",
           "average_case_flatness", "hessian_trace", "measure_named", "pac_bayes_flatness", "register_measure",
           "registered", "registered_names", "relative_flatness", "sharpness", "worst_case_flatness"]

# a measure file registers its measures when imported: every file of the package is, exported above or not
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
