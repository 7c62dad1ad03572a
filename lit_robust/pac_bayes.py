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

from dataclasses import dataclass
from typing import Iterable, List, Literal, Optional

import torch
from torch import Tensor, nn

from lit_robust.attacks import PAPER_EPSILON, PAPER_STEP_SIZE, PGD, Norm, restore_modes
from lit_robust.errors import check, check_choice
from lit_robust.evaluation import clean_and_robust
from lit_robust.flatness import Reduce
from lit_robust.hessian_trace import examples
from lit_robust.weights import Selection, gaussian_direction, names_and_weights, perturbed

ErrorKind = Literal["rerr", "err"]


@dataclass
class PacBayesResult:
    """The outcome of the search for sigma'.

    Attributes:
        flatness: the measure, 1 / sigma'^2.
        sigma: sigma'.
        deviation: E_u[Err(w + u)] - Err(w) at sigma'.
        reference: Err(w).
        examples: number of examples (over all processes).
    """

    flatness: float
    sigma: float
    deviation: float
    reference: float
    examples: int

    @property
    def std(self) -> float:
        """No spread is estimated; 0 (for the monitor's common interface)."""
        return 0.0


def pac_bayes_flatness(model: nn.Module, loader: Iterable, error: ErrorKind = "rerr", magnitude_aware: bool = True,
                       target: float = 0.1, tolerance: float = 0.01, search_depth: int = 15, samples: int = 3,
                       upper: float = 2.0, magnitude_epsilon: float = 1e-3, epsilon: float = PAPER_EPSILON,
                       step_size: float = PAPER_STEP_SIZE, steps: int = 20, norm: Norm = "linf",
                       random_start: bool = True,
                       max_examples: Optional[int] = 1000, which: Selection = "all",
                       reduce: Optional[Reduce] = None,
                       generator: Optional[torch.Generator] = None) -> PacBayesResult:
    """1/sigma'^2 of Jiang et al. (2020), sigma' the largest weight noise raising the (robust) error by ``target``.

    Args:
        model: the network; left exactly as it was.
        loader: batches ``(x, y)`` of [0, 1] images and labels.
        error: ``"rerr"`` (robust error under PGD at the perturbed weights) or ``"err"`` (clean error).
        magnitude_aware: noise N(0, sigma^2 w^2 + epsilon^2) (True) or N(0, sigma^2) (False).
        target: the deviation of the error to reach (0.1).
        tolerance: stop when the deviation is within this of ``target`` (0.01).
        search_depth: at most this many bisection steps (15).
        samples: Monte-Carlo noise draws per sigma (3).
        upper: upper end of the search interval [0, upper] (2).
        magnitude_epsilon: epsilon of the magnitude-aware noise (1e-3).
        epsilon: radius of the input threat model.
        step_size: PGD step size.
        steps: PGD iterations at each perturbed network (20).
        norm: input threat model.
        random_start: PGD starts at a random point of the ball.
        max_examples: at most this many examples from the start of the loader (1000).
        which: the perturbed tensors (see :func:`~lit_robust.weights.select_parameters`).
        reduce: sums a tensor over processes (for data-parallel evaluation).
        generator: random-number generator of the noise draws.
    """
    check_choice(error, "error", ("rerr", "err"))
    check(0 < target < 1, "target", target, "a number in (0, 1)")
    check(0 < tolerance < target, "tolerance", tolerance, "a number in (0, target)")
    check(upper > 0, "upper", upper, "a number > 0")
    check(magnitude_epsilon >= 0, "magnitude_epsilon", magnitude_epsilon, "a number >= 0")
    for name, value in (("search_depth", search_depth), ("samples", samples)):
        check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("PAC-Bayes flatness attacks the network but was called under torch.inference_mode(); "
                           "run the Trainer with inference_mode=False (train.py does) or call it outside it.")
    _, weights = names_and_weights(model, which)
    attack = PGD(epsilon, step_size, steps, norm=norm, random_start=random_start)
    batches = list(examples(model, loader, None, max_examples))
    draws = [gaussian_direction(weights, generator) for _ in range(samples)]

    def errors() -> Tensor:
        wrong = torch.zeros((), dtype=torch.float64, device=weights[0].device)
        for x, y in batches:
            if error == "err":
                with torch.no_grad():
                    wrong += (model(x).argmax(dim=1) != y).sum().double()
            else:
                wrong += clean_and_robust(model, x, y, attack)["rerr"].sum().double()
        return wrong

    def noise(sigma: float, z: List[Tensor]) -> List[Tensor]:
        if not magnitude_aware:
            return [sigma * d for d in z]
        return [torch.sqrt(sigma ** 2 * w.detach() ** 2 + magnitude_epsilon ** 2) * d for w, d in zip(weights, z)]

    def reduced(t: Tensor) -> Tensor:
        return t if reduce is None else reduce(t)

    with restore_modes(model, False), torch.enable_grad():
        first = reduced(torch.stack([errors(), torch.tensor(float(sum(len(y) for _, y in batches)),
                                                            dtype=torch.float64, device=weights[0].device)]))
        count = float(first[1])
        if count == 0:
            raise ValueError("PAC-Bayes flatness was asked for on a loader without examples")
        reference = float(first[0]) / count
        lower, high, sigma, deviation = 0.0, float(upper), float(upper), 0.0
        for _ in range(search_depth):
            sigma = (lower + high) / 2
            wrong = torch.zeros((), dtype=torch.float64, device=weights[0].device)
            for z in draws:
                with perturbed(weights, noise(sigma, z)):
                    wrong += errors()
            deviation = float(reduced(wrong)) / (count * samples) - reference
            if abs(deviation - target) < tolerance:
                break
            if deviation > target:
                high = sigma
            else:
                lower = sigma
    return PacBayesResult(flatness=1.0 / sigma ** 2, sigma=sigma, deviation=deviation, reference=reference,
                          examples=int(count))
