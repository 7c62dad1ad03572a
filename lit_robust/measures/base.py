"""What every flatness or sharpness measure shares: its declaration, its frame around the model, its result.

A measure is a :class:`Measure`: it declares a ``name`` (its metric is ``flatness/<name>``), the ``loss`` it
measures (robust, ``"rloss"`` / ``"rerr"``, or clean, ``"loss"`` / ``"err"``) and whether larger means
sharper; it holds its settings (typed keyword arguments, so YAML can give them as ``class_path`` /
``init_args``) and, called with a model and a loader, measures once. The frame is the base class's, written
once for every measure: refused under ``torch.inference_mode()``, the model in eval mode and its modes
restored afterwards, gradients enabled, the first ``max_examples`` examples of the loader as it yields them
(the batch contract of :mod:`lit_robust.data.batches`), each batch checked against the [0, 1] input contract
(:func:`~lit_robust.attacks.sanity.check_input_range`) and moved to the model's device, the sums reduced over
processes in one collective and a loader without examples refused.
"""

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, Literal, Optional, Tuple

import torch
from torch import Tensor, nn

from lit_robust.attacks import PAPER_EPSILON, PAPER_STEP_SIZE, PGD, Norm, ThreatModel, restore_modes
from lit_robust.attacks.sanity import check_input_range
from lit_robust.data.batches import inputs_and_targets
from lit_robust.errors import check
from lit_robust.inference_mode import require_gradients
from lit_robust.measures.settings import FlatnessSettings
from lit_robust.weights import Selection

LossKind = Literal["rloss", "loss"]
Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over processes (e.g. ``trainer.strategy.reduce`` with ``"sum"``)."""


@dataclass
class MeasureResult:
    """One measure over a data set.

    Attributes:
        flatness: the measure (``perturbed - reference`` for a difference of losses).
        std: standard deviation over the measure's samples (weight samples, restarts or probes; 0 if none).
        perturbed: the first term (E_nu[.] or max_nu[.], or the estimate itself), averaged over examples.
        reference: the second term, the loss (or error) at w, averaged over examples (0 if none).
        examples: number of examples it was measured on (over all processes).
        details: further quantities of the measure (PAC-Bayes: ``sigma`` and ``deviation``).
    """

    flatness: float
    std: float
    perturbed: float
    reference: float
    examples: int
    details: Dict[str, float] = field(default_factory=dict)


def first_examples(loader: Iterable, max_examples: Optional[int],
                   device: torch.device) -> Iterator[Tuple[Tensor, Tensor]]:
    """The first ``max_examples`` examples (all when ``None``) of ``loader`` as it yields them, as ``(x, y)``
    batches on ``device``, each checked against the [0, 1] input contract."""
    seen = 0
    for batch in loader:
        x, y = inputs_and_targets(batch)
        if max_examples is not None:
            x, y = x[:max_examples - seen], y[:max_examples - seen]
        if len(y) == 0:
            return
        check_input_range(x)
        seen += len(y)
        yield x.to(device), y.to(device)


def reduced(totals: Tensor, reduce: Optional[Reduce], name: str, count: int = 0) -> Tensor:
    """``totals`` summed over processes by ``reduce``; a ValueError naming ``name`` when ``totals[count]``, the
    number of examples, is 0."""
    if reduce is not None:
        totals = reduce(totals)
    if float(totals[count]) == 0:
        raise ValueError(f"{name} was asked for on a loader without examples")
    return totals


class Examples:
    """The batches a measure sees: re-iterable, each pass reading the loader anew (see :func:`first_examples`)."""

    def __init__(self, loader: Iterable, max_examples: Optional[int], device: torch.device) -> None:
        self.loader, self.max_examples, self.device = loader, max_examples, device

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        return first_examples(self.loader, self.max_examples, self.device)


class Measure(ABC):
    """A flatness or sharpness measure: its declaration, its settings and its frame around the model.

    Subclasses set ``loss`` (and ``larger_is_sharper`` where larger means flatter), give :attr:`name` and
    implement :meth:`measure`; registering one by name (:func:`~lit_robust.measures.registry.register_measure`)
    makes it selectable in :class:`~lit_robust.callbacks.FlatnessMonitor` by that name.

    Args:
        epsilon: radius of the input threat model; None: the module's (in ``FlatnessMonitor``), else 8/255.
        step_size: PGD step size; None: the module's, else 0.007.
        norm: input threat model, ``"linf"`` or ``"l2"``; None: the module's, else ``"linf"``.
        random_start: PGD starts at a random point of the input ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: the tensors of the weight space (see :func:`~lit_robust.weights.select_parameters`).
    """

    loss: str = "rloss"
    """What it measures: ``"rloss"`` / ``"rerr"`` (robust) or ``"loss"`` / ``"err"`` (clean)."""
    larger_is_sharper: bool = True

    def __init__(self, *, epsilon: Optional[float] = None, step_size: Optional[float] = None,
                 norm: Optional[Norm] = None, random_start: bool = True, max_examples: Optional[int] = 1000,
                 which: Selection = "all") -> None:
        check(max_examples is None or max_examples >= 1, "max_examples", max_examples, "None or an integer >= 1")
        self.epsilon, self.step_size, self.norm = epsilon, step_size, norm
        self.random_start, self.max_examples, self.which = random_start, max_examples, which

    @property
    @abstractmethod
    def name(self) -> str:
        """The measure's name; it is logged as ``flatness/<name>``."""

    @property
    def robust(self) -> bool:
        """Whether it measures the robust loss (or error), which needs a threat model."""
        return self.loss in ("rloss", "rerr")

    @property
    def threat_model(self) -> ThreatModel:
        """The input threat model it attacks with (the paper's where unset)."""
        return ThreatModel(PAPER_EPSILON if self.epsilon is None else self.epsilon,
                           PAPER_STEP_SIZE if self.step_size is None else self.step_size, self.norm or "linf")

    def with_threat_model(self, threat_model: ThreatModel) -> "Measure":
        """A copy whose unset epsilon, step size and norm are ``threat_model``'s."""
        bound = copy.copy(self)
        bound.epsilon = threat_model.epsilon if self.epsilon is None else self.epsilon
        bound.step_size = threat_model.step_size if self.step_size is None else self.step_size
        bound.norm = threat_model.norm if self.norm is None else self.norm
        return bound

    def attack(self, steps: int, restarts: int = 1) -> PGD:
        """PGD under the measure's threat model."""
        t = self.threat_model
        return PGD(t.epsilon, t.step_size, steps, restarts=restarts, norm=t.norm, random_start=self.random_start)

    @classmethod
    def from_settings(cls, settings: FlatnessSettings, options: Dict[str, Any], **fixed: Any) -> "Measure":
        """The measure as :class:`~lit_robust.callbacks.FlatnessMonitor` builds it for a name it was registered
        under: ``fixed`` are the registration's arguments, ``settings`` the stage's
        :class:`~lit_robust.measures.settings.FlatnessSettings` and ``options`` the monitor's other settings.
        By default the measure's own defaults and ``fixed``; a measure with a cost maps the settings to it."""
        return cls(**fixed)

    @classmethod
    def once(cls, model: nn.Module, loader: Iterable, reduce: Optional[Reduce] = None,
             generator: Optional[torch.Generator] = None, **settings: Any) -> MeasureResult:
        """The measure with ``settings`` (its keyword arguments; the threat model by default the paper's)
        called once on ``model`` and ``loader``: the functional twin of each measure.

        Args:
            model: the network; left exactly as it was.
            loader: batches ``(x, y, ...)`` of [0, 1] images and labels; the first ``max_examples`` are used.
            reduce: sums a tensor over processes (for data-parallel evaluation).
            generator: random-number generator of the measure's weight perturbations or probes.
            **settings: the keyword arguments of the measure's class.
        """
        return cls(**settings)(model, loader, reduce, generator)

    def __call__(self, model: nn.Module, loader: Iterable, reduce: Optional[Reduce] = None,
                 generator: Optional[torch.Generator] = None) -> MeasureResult:
        """Measure ``model`` on the first ``max_examples`` examples of ``loader``; the model is left as it was.

        Args:
            model: the network, taking [0, 1] images and returning logits.
            loader: batches ``(x, y, ...)`` or dicts (see :mod:`lit_robust.data.batches`) of [0, 1] images and labels.
            reduce: sums a tensor over processes; each process passes its own share of the examples.
            generator: random-number generator of the measure's weight perturbations or probes.
        """
        require_gradients(self.name)
        device = next(model.parameters()).device
        with restore_modes(model, False), torch.enable_grad():
            return self.measure(model, Examples(loader, self.max_examples, device), reduce, generator)

    @abstractmethod
    def measure(self, model: nn.Module, batches: Examples, reduce: Optional[Reduce],
                generator: Optional[torch.Generator]) -> MeasureResult:
        """The measure of ``model`` (in eval mode, gradients enabled) on ``batches``, reduced with ``reduce``."""

