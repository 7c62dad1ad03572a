"""What a callback that attacks or measures needs from a LightningModule: the network and the threat model.

An :class:`~lit_robust.modules.AdversarialModule` has both (``model`` and ``threat_model``). A user's own
LightningModule names its network with the callback's ``network`` setting (an attribute name, or a callable
taking the module) and gives the threat model as the callback's ``epsilon``, ``step_size`` and ``norm``
(L-inf unless told). Both are resolved at ``setup``, before the first batch, with one error naming every
missing setting.
"""

from typing import Callable, Optional, Union

from torch import nn

from lit_robust.attacks import Norm, ThreatModel, check_step_size, check_threat_model
from lit_robust.errors import ConfigurationError, check

NetworkSetting = Union[str, Callable[[nn.Module], nn.Module]]
"""The network of a LightningModule: the name of its attribute (``"model"``), or a callable taking the module."""


def network_of(pl_module: nn.Module, network: NetworkSetting = "model", user: str = "this callback") -> nn.Module:
    """The network of ``pl_module`` that ``user`` attacks or measures.

    Args:
        pl_module: the LightningModule.
        network: the name of the attribute that holds the network, or a callable ``network(pl_module)``.
        user: the callback's name, for the message.

    Raises:
        ConfigurationError: naming ``network`` and the module's attributes that are networks, when it is none.
    """
    found = network(pl_module) if callable(network) else getattr(pl_module, network, None)
    if not isinstance(found, nn.Module):
        candidates = ", ".join(name for name, _ in pl_module.named_children()) or "none"
        shown = network if isinstance(network, str) else getattr(network, "__name__", repr(network))
        check(False, "network", shown,
              f"the attribute of {type(pl_module).__name__} that holds the network {user} attacks and measures "
              f"(its submodules: {candidates}), or a callable taking the module")
    return found


def threat_model_for(pl_module: nn.Module, epsilon: Optional[float] = None, step_size: Optional[float] = None,
                     norm: Optional[Norm] = None, user: str = "this callback") -> ThreatModel:
    """The threat model ``user`` attacks with: the settings given, the rest from the module's ``threat_model``.

    Args:
        pl_module: the LightningModule; an ``AdversarialModule`` has a ``threat_model``.
        epsilon: the radius, or ``None`` for the module's.
        step_size: the PGD step size, or ``None`` for the module's.
        norm: ``"linf"`` or ``"l2"``, or ``None`` for the module's (L-inf for a module without a threat model).
        user: the callback's name, for the message.

    Raises:
        ConfigurationError: naming all missing settings at once when the module has no threat model, or a
            setting out of its range.
    """
    own = getattr(pl_module, "threat_model", None)
    if not isinstance(own, ThreatModel):
        missing = [name for name, value in (("epsilon", epsilon), ("step_size", step_size)) if value is None]
        if missing:
            raise ConfigurationError(
                f"{' and '.join(missing)} not set: {user} needs {', '.join(missing)} (norm defaults to 'linf') "
                f"because {type(pl_module).__name__} has no threat_model (a lit_robust AdversarialModule has one).")
        own = ThreatModel(epsilon, step_size, norm or "linf")
    chosen = ThreatModel(own.epsilon if epsilon is None else epsilon, own.step_size if step_size is None else step_size,
                         own.norm if norm is None else norm)
    check(chosen.norm in ("linf", "l2"), "norm", chosen.norm, "'linf' or 'l2'")
    check_threat_model(chosen.epsilon, chosen.norm)
    check_step_size(chosen.step_size, chosen.epsilon)
    return chosen
