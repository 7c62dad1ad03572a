"""PAC-Bayes flatness, plain and magnitude-aware, in robust and clean error.

Jiang et al., ICLR 2020, "Fantastic Generalization Measures and Where to Find Them", Sec. 4 and
Appendix C ("pacbayes.flatness", "pacbayes.mag.flatness"): sigma' is the largest standard deviation
such that Gaussian weight noise raises the error by about a target deviation d = 0.1 on average,

    plain:            u ~ N(0, sigma'^2 I)                      E_u[Err(w + u)] - Err(w) ~= d,
    magnitude-aware:  u_i ~ N(0, sigma'^2 w_i^2 + epsilon^2)    (epsilon = 1e-3),

found by bisection on sigma' in [0, 2] (at most 15 halvings, stopping when the deviation is within
0.01 of d), the expectation by Monte-Carlo over a few noise draws; the measure is 1/sigma'^2 (larger:
sharper). In robust error (RErr: wrong on the clean input or on the PGD example, PGD run at the
perturbed weights) or in clean error.

Conventions of the public code the relative-flatness authors adapted (their ``pacbayes_sigma``):
search interval [0, 2], depth 15, tolerance 0.01, 3 Monte-Carlo draws (10 in Jiang et al.), the
absolute change of the accuracy. Differences: the noise here is N(0, sigma'^2 w^2 + epsilon^2) as
the paper writes (the code passes the variance where torch.normal takes the standard deviation);
the same noise draws z serve every bisection step (u = sqrt(sigma^2 w^2 + epsilon^2) z), so the
error is a smooth function of sigma along the search; batch normalisation and the tensors outside
:func:`~lit_robust.weights.select_parameters` are not perturbed (Jiang et al. perturb all weights,
the code all parameters). Each bisection step reduces its error counts over processes in one
collective (the next sigma depends on it); the draws are evaluated one after another, not vmap-ed.
"""

from typing import Any, Dict, List, Literal, Optional

import torch
from torch import Tensor, nn

from lit_robust.attacks import Norm
from lit_robust.attacks.evaluation import clean_and_robust
from lit_robust.errors import check, check_choice
from lit_robust.measures.base import Examples, Measure, MeasureResult, Reduce, reduced
from lit_robust.measures.registry import register_measure
from lit_robust.measures.settings import FlatnessSettings
from lit_robust.weights import Selection, gaussian_direction, names_and_weights, perturbed

ErrorKind = Literal["rerr", "err"]


@register_measure("pac_bayes_mag_err", error="err", magnitude_aware=True)
@register_measure("pac_bayes_mag_rerr", error="rerr", magnitude_aware=True)
@register_measure("pac_bayes_err", error="err", magnitude_aware=False)
@register_measure("pac_bayes_rerr", error="rerr", magnitude_aware=False)
class PacBayesFlatness(Measure):
    """1/sigma'^2 of Jiang et al. (2020), sigma' the largest weight noise raising the (robust) error by ``target``.

    ``flatness`` is 1/sigma'^2, ``reference`` Err(w), ``perturbed`` E_u[Err(w + u)] at sigma', ``std`` 0;
    ``details`` holds ``sigma`` (sigma') and ``deviation`` (E_u[Err(w + u)] - Err(w) at sigma').

    Args:
        error: ``"rerr"`` (robust error under PGD at the perturbed weights) or ``"err"`` (clean error).
        magnitude_aware: noise N(0, sigma^2 w^2 + epsilon^2) (True) or N(0, sigma^2) (False).
        target: the deviation of the error to reach (0.1).
        tolerance: stop when the deviation is within this of ``target`` (0.01).
        search_depth: at most this many bisection steps (15).
        samples: Monte-Carlo noise draws per sigma (3).
        upper: upper end of the search interval [0, upper] (2).
        magnitude_epsilon: epsilon of the magnitude-aware noise (1e-3).
        steps: PGD iterations at each perturbed network (20).
        epsilon: radius of the input threat model (see :class:`~lit_robust.measures.base.Measure`).
        step_size: PGD step size.
        norm: input threat model.
        random_start: PGD starts at a random point of the ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: the perturbed tensors (see :func:`~lit_robust.weights.select_parameters`).
    """

    def __init__(self, *, error: ErrorKind = "rerr", magnitude_aware: bool = True, target: float = 0.1,
                 tolerance: float = 0.01, search_depth: int = 15, samples: int = 3, upper: float = 2.0,
                 magnitude_epsilon: float = 1e-3, steps: int = 20, epsilon: Optional[float] = None,
                 step_size: Optional[float] = None, norm: Optional[Norm] = None, random_start: bool = True,
                 max_examples: Optional[int] = 1000, which: Selection = "all") -> None:
        super().__init__(epsilon=epsilon, step_size=step_size, norm=norm, random_start=random_start,
                         max_examples=max_examples, which=which)
        check_choice(error, "error", ("rerr", "err"))
        check(0 < target < 1, "target", target, "a number in (0, 1)")
        check(0 < tolerance < target, "tolerance", tolerance, "a number in (0, target)")
        check(upper > 0, "upper", upper, "a number > 0")
        check(magnitude_epsilon >= 0, "magnitude_epsilon", magnitude_epsilon, "a number >= 0")
        for name, value in (("search_depth", search_depth), ("samples", samples)):
            check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        self.loss, self.magnitude_aware, self.target, self.tolerance = error, magnitude_aware, target, tolerance
        self.search_depth, self.samples, self.upper, self.magnitude_epsilon = (
            search_depth, samples, upper, magnitude_epsilon)
        self.steps = steps

    @property
    def name(self) -> str:
        return f"pac_bayes_{'mag_' if self.magnitude_aware else ''}{self.loss}"

    @classmethod
    def from_settings(cls, settings: FlatnessSettings, options: Dict[str, Any], **fixed: Any) -> "PacBayesFlatness":
        return cls(target=options["pac_bayes_target"], search_depth=options["pac_bayes_search_depth"],
                   samples=options["pac_bayes_samples"], magnitude_epsilon=options["pac_bayes_epsilon"],
                   steps=settings.pgd_steps, max_examples=None, **fixed)

    def measure(self, model: nn.Module, batches: Examples, reduce: Optional[Reduce],
                generator: Optional[torch.Generator]) -> MeasureResult:
        _, weights = names_and_weights(model, self.which)
        attack = self.attack(self.steps)
        batches = list(batches)
        draws = [gaussian_direction(weights, generator) for _ in range(self.samples)]
        device = weights[0].device

        def errors() -> Tensor:
            wrong = torch.zeros((), dtype=torch.float64, device=device)
            for x, y in batches:
                if not self.robust:
                    with torch.no_grad():
                        wrong += (model(x).argmax(dim=1) != y).sum().double()
                else:
                    wrong += clean_and_robust(model, x, y, attack)["rerr"].sum().double()
            return wrong

        def noise(sigma: float, z: List[Tensor]) -> List[Tensor]:
            if not self.magnitude_aware:
                return [sigma * d for d in z]
            return [torch.sqrt(sigma ** 2 * w.detach() ** 2 + self.magnitude_epsilon ** 2) * d
                    for w, d in zip(weights, z)]

        first = reduced(torch.stack([torch.tensor(float(sum(len(y) for _, y in batches)), dtype=torch.float64,
                                                  device=device), errors()]), reduce, "PAC-Bayes flatness")
        count = float(first[0])
        reference = float(first[1]) / count
        lower, high, sigma, deviation = 0.0, float(self.upper), float(self.upper), 0.0
        for _ in range(self.search_depth):
            sigma = (lower + high) / 2
            wrong = torch.zeros((), dtype=torch.float64, device=device)
            for z in draws:
                with perturbed(weights, noise(sigma, z)):
                    wrong += errors()
            deviation = float(wrong if reduce is None else reduce(wrong)) / (count * self.samples) - reference
            if abs(deviation - self.target) < self.tolerance:
                break
            if deviation > self.target:
                high = sigma
            else:
                lower = sigma
        return MeasureResult(flatness=1.0 / sigma ** 2, std=0.0, perturbed=reference + deviation, reference=reference,
                             examples=int(count), details={"sigma": sigma, "deviation": deviation})


pac_bayes_flatness = PacBayesFlatness.once
"""The functional twin: ``pac_bayes_flatness(model, loader, reduce=None, generator=None, **settings)``."""
