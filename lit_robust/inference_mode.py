"""The guard against ``torch.inference_mode()`` for everything that needs gradients.

Attacks need input gradients and the measures need gradients in the weights (or both); under
``torch.inference_mode()``, Lightning's default for validation and test, neither exists, and the failure would
come from deep inside autograd. Every such entry point calls :func:`require_gradients` first.
"""

import torch


def require_gradients(what: str) -> None:
    """Raise :class:`RuntimeError` with what to do when ``what`` (an attack, a measure) is called under
    ``torch.inference_mode()``, where no gradient exists (Lightning's Trainer evaluates in inference mode by
    default).

    Args:
        what: what needs the gradients, as the message names it (``"attacks"``, a measure's name).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{what}: gradients are needed, but this ran under torch.inference_mode(); run the Trainer with "
            "inference_mode=False (train.py does) or call it outside inference mode.")
