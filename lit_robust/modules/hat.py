"""Helper-based adversarial training, HAT (Rade and Moosavi-Dezfooli, ICLR 2022)."""

import copy
import os
import warnings
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lit_robust.attacks import PGD
from lit_robust.errors import ConfigurationError, check
from lit_robust.modules.base import AdversarialModule, step_output
from lit_robust.modules.losses import trades_loss
from lit_robust.modules.objectives import base_attack


class FrozenNetwork:
    """A network kept outside the module tree (not a submodule, so not in the state dict, not trained,
    not averaged, not wrapped by DDP): in eval mode, without gradients, moved to the inputs' device
    when called.

    Args:
        network: the trained network; its parameters stop requiring gradients.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        parameter = next(self.network.parameters(), None)
        if parameter is not None and parameter.device != x.device:
            self.network.to(x.device)
        return self.network(x)


def network_state(path: str) -> Dict[str, Tensor]:
    """The network's weights in the checkpoint ``path``: the ``model.``-prefixed tensors of a Lightning
    checkpoint of this library (any :class:`~lit_robust.modules.base.AdversarialModule`), or a plain
    ``state_dict`` of the network.

    Args:
        path: the checkpoint file.
    """
    allowed = "an existing checkpoint of a standard (clean) training run (a Lightning checkpoint of this library)"
    check(os.path.isfile(path), "standard_checkpoint", path, allowed)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever the reason, it is not a checkpoint this run can use
        raise ConfigurationError(f"standard_checkpoint={path!r} is not allowed ({type(error).__name__}): "
                                 f"standard_checkpoint must be {allowed}.") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    check(isinstance(state, dict), "standard_checkpoint", path, allowed)
    prefixed = {name[len("model."):]: value for name, value in state.items() if name.startswith("model.")}
    return prefixed or state


class HAT(AdversarialModule):
    """TRADES plus helper examples (Rade and Moosavi-Dezfooli, "Reducing excessive margin to achieve a
    better accuracy vs. robustness trade-off", ICLR 2022; the HAT loss):

        CE(f(x), y) + beta * KL(f(x) || f(x + r)) + gamma * CE(f(x + h r), y_helper),
        r = x_adv - x,  y_helper = argmax f_std(x + r),

    where x_adv comes from TRADES' attack (PGD on KL(f(x) || f(x + delta)) from 0.001 * N(0, 1),
    see :func:`~lit_robust.modules.objectives.base_attack`), the helper example x + h r (h = 2)
    goes twice as far as the adversarial example, and its label y_helper is the prediction of a
    standard (clean-trained) network f_std on the adversarial example. Helper examples teach the
    network that beyond the adversarial example the label may change, which reduces the excessive
    margin TRADES and AT give along adversarial directions. Defaults are the official code's for
    CIFAR-10 (imrahulr/hat, its README's CIFAR-10 command and h's default): beta = 2.5, gamma = 0.5, h = 2;
    as there, the helper examples are not clamped to [0, 1], and the three forward passes of the loss run one
    after the other.

    The standard network comes from ``standard_checkpoint``, a checkpoint of this library (e.g. of a
    :class:`~lit_robust.modules.standard.StandardTraining` run; its ``model.`` tensors are read) or
    a plain state dict, loaded into ``standard_model`` or, without one, into a copy of ``model``'s
    architecture when fitting starts; or it is ``standard_model`` itself when no checkpoint is
    given. It is frozen (eval mode, no gradients) and kept out of the module tree, so it is not in
    this module's checkpoints, optimiser, weight averages or hyper-parameters.

    Per training step with PGD-K: K + 4 forward passes of the network (the attack's clean target
    without gradients, K attack iterations, then clean, adversarial and helper for the update), K
    input-only backward passes and one full backward pass (PGD-7: 11 forward, 7 input-only backward,
    1 full backward), plus one forward pass of the standard network without gradients.

    Args:
        beta: weight of the KL (TRADES) term (2.5 for CIFAR-10 in the official code).
        gamma: weight of the helper loss (0.5 for CIFAR-10 in the official code).
        h: helper examples are x + h (x_adv - x) (2 in the paper).
        standard_checkpoint: path of the standard network's checkpoint (see above).
        standard_model: the standard network's architecture (with ``standard_checkpoint``) or the
            trained standard network itself (without it).
        **kwargs: :class:`~lit_robust.modules.base.AdversarialModule` arguments.
    """

    def __init__(self, *args: Any, beta: float = 2.5, gamma: float = 0.5, h: float = 2.0,
                 standard_checkpoint: Optional[str] = None, standard_model: Optional[nn.Module] = None,
                 **kwargs: Any) -> None:
        check(beta >= 0, "beta", beta, "a number >= 0 (2.5 for CIFAR-10 in the official code)")
        check(gamma >= 0, "gamma", gamma, "a number >= 0 (0.5 for CIFAR-10 in the official code)")
        check(h > 1, "h", h, "a number > 1 (helper examples lie beyond the adversarial ones; 2 in the paper)")
        check(standard_model is None or isinstance(standard_model, nn.Module), "standard_model",
              type(standard_model).__name__, "an nn.Module or null")
        check(standard_checkpoint is not None or standard_model is not None, "standard_checkpoint",
              standard_checkpoint, "the path of a standard (clean) training run's checkpoint, unless "
              "standard_model is a trained standard network")
        with warnings.catch_warnings():  # Lightning's advice to ignore a network argument: done just below
            warnings.filterwarnings("ignore", message=".*standard_model.*")
            super().__init__(*args, **kwargs)
        for hparams in (self._hparams, self._hparams_initial):  # a network is no hyper-parameter
            hparams.pop("standard_model", None)
        # a plain attribute, not a submodule: outside the module tree
        self._standard = None if standard_model is None else FrozenNetwork(standard_model)
        self._standard_loaded = standard_checkpoint is None

    def make_train_attack(self) -> PGD:
        """TRADES' attack: PGD on KL(f(x) || f(x + delta)) from 0.001 * N(0, 1), last iterate, eval mode."""
        return base_attack("trades", **self.train_attack_arguments())

    def standard_network(self) -> FrozenNetwork:
        """f_std, loaded from ``standard_checkpoint`` on first use."""
        if not self._standard_loaded:
            path = self.hparams.standard_checkpoint
            network = self._standard.network if self._standard is not None else copy.deepcopy(self.model)
            try:
                network.load_state_dict(network_state(path))
            except RuntimeError as error:
                raise ConfigurationError(
                    f"standard_checkpoint={path!r} is not allowed: its network does not fit "
                    f"{type(network).__name__} ({str(error).splitlines()[0]}); standard_checkpoint must hold the "
                    "weights of standard_model, or of model's architecture when standard_model is null.") from error
            rank_zero_info(f"HAT: standard network loaded from {path}")
            self._standard, self._standard_loaded = FrozenNetwork(network), True
        return self._standard

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.standard_network()  # a bad checkpoint fails before training starts

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, Tensor]:
        x, y = self.inputs_and_targets(batch)
        h = self.hparams
        # inner maximisation: TRADES' adversarial example, the helper example and its label
        x_adv = self.train_attack(self.model, x, y)
        x_helper = x + h.h * (x_adv - x)
        y_helper = self.standard_network()(x_adv).argmax(dim=1)
        # outer minimisation: CE(f(x), y) + beta * KL(f(x) || f(x_adv)) + gamma * CE(f(x_helper), y_helper)
        clean_logits = self.model(x)
        adversarial_logits = self.model(x_adv)
        helper_logits = self.model(x_helper)
        loss = trades_loss(clean_logits, adversarial_logits, y, h.beta) + h.gamma * F.cross_entropy(helper_logits,
                                                                                                     y_helper)
        return step_output(loss, adversarial_logits, y)
