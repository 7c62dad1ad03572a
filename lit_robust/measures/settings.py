"""What a measurement costs: the settings that differ between per-epoch and test measurement in FlatnessMonitor."""

from dataclasses import dataclass
from typing import Optional

from lit_robust.errors import check


@dataclass(frozen=True)
class FlatnessSettings:
    """What a flatness measurement costs: the settings that differ between per-epoch and test measurement.

    Frozen, so one instance can safely be a default. The defaults are the per-epoch ones of
    :class:`~lit_robust.callbacks.FlatnessMonitor`; :data:`PAPER_SETTINGS` holds the paper's (Stutz et al. 2021,
    supplement Sec. D).

    Args:
        examples: examples per split, from the start of the split (the paper: 1000).
        samples: weight samples per batch of average-case flatness (10).
        pgd_steps: PGD iterations of RLoss, at perturbed weights (one restart) and of the reference
            RLoss(w); also of the adversarial examples of the measures beyond the paper's (20).
        pgd_restarts: PGD restarts of the reference RLoss(w), worst case per example (10).
        ascent_iterations: iterations of the worst-case joint ascent on nu and delta, and of the
            ascent of worst-case adaptive sharpness (20).
        ascent_restarts: restarts of the worst-case joint ascent, maximum taken per batch (10).
        adaptive_samples: Gaussian draws per batch of average-case adaptive sharpness (None: ``samples``).
        hutchinson_samples: probe vectors of relative flatness and the Hessian trace (100).
    """

    examples: int = 32
    samples: int = 2
    pgd_steps: int = 3
    pgd_restarts: int = 1
    ascent_iterations: int = 3
    ascent_restarts: int = 1
    adaptive_samples: Optional[int] = None
    hutchinson_samples: int = 10

    def check(self, stage: str) -> None:
        """Raise a ConfigurationError naming ``<stage>.<field>`` for the first setting that is not an integer >= 1."""
        for name in ("examples", "samples", "pgd_steps", "pgd_restarts", "ascent_iterations", "ascent_restarts",
                     "adaptive_samples", "hutchinson_samples"):
            value = getattr(self, name)
            if name == "adaptive_samples" and value is None:
                continue
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"{stage}.{name}", value,
                  "an integer >= 1" + (" or None (samples)" if name == "adaptive_samples" else ""))


# the paper's test settings (Stutz et al. 2021, supplement Sec. D): 1000 examples, 10 samples, PGD-20 with 10
# restarts, 20 ascent iterations with 10 restarts; 100 Hutchinson probes
PAPER_SETTINGS = FlatnessSettings(examples=1000, samples=10, pgd_steps=20, pgd_restarts=10, ascent_iterations=20,
                                  ascent_restarts=10, adaptive_samples=None, hutchinson_samples=100)
