"""lit_robust: adversarial training, robust overfitting and flatness of the robust loss, in Lightning."""

__version__ = "0.1.0"
