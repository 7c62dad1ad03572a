"""Weight clipping to [-w_max, w_max] after every optimizer step (Stutz et al. 2021, supplement Sec. G)."""

from typing import Any, List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lit_robust.errors import check, check_choice
from lit_robust.weights import Selection, select_parameters


class WeightClipping(Callback):
    """Clip the chosen parameters to [-w_max, w_max] after each training iteration.

    Stutz et al. 2021, supplement Sec. G, after Stutz et al., MLSys 2021 (bit error robustness).

    The paper finds w_max as small as 0.005 works well and considers w_max in {0.005, 0.01, 0.025}.
    The clipping runs as a post-hook of every optimizer's ``step``, so it happens right after each
    optimizer step, also with gradient accumulation and manual optimisation, and before any other
    callback sees the weights (weight averaging averages the clipped weights).

    Args:
        max_value: w_max, > 0.
        parameters: which tensors are clipped (:func:`lit_robust.weights.select_parameters` of the
            module's ``model``): ``"all"``, every weight and bias except those of normalisation
            layers (whose scale, around 1, clipping to 0.005 would destroy); ``"weights"``, only
            the weights of convolutional and linear layers.
    """

    def __init__(self, max_value: float = 0.005, parameters: Selection = "all") -> None:
        check(max_value > 0, "max_value", max_value, "a number > 0 (w_max; the paper uses 0.005, 0.01, 0.025)")
        check_choice(parameters, "parameters", ("all", "weights"))
        self.max_value = max_value
        self.parameters = parameters
        self._clipped: List[nn.Parameter] = []
        self._handles: List[RemovableHandle] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(max_value=self.max_value, parameters=self.parameters)

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Hook :meth:`clip` to the end of every optimizer's ``step`` (Stutz et al. 2021, supplement Sec. G)."""
        network = getattr(pl_module, "model", pl_module)
        self._clipped = [parameter for _, parameter in select_parameters(network, self.parameters)]
        self._handles = [optimizer.register_step_post_hook(self._after_step) for optimizer in trainer.optimizers]

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        """Unhook from the optimizers."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Optional[dict]) -> None:
        self.clip()

    @torch.no_grad()
    def clip(self) -> None:
        """Clip every chosen parameter to [-w_max, w_max] in place."""
        for parameter in self._clipped:
            parameter.clamp_(-self.max_value, self.max_value)
