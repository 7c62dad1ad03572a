"""The measures by name: what ``FlatnessMonitor(measures=[...])`` and YAML's ``measures: [avg_rloss, ...]`` read.

A measure defined anywhere (in the library or in a user's project) is registered with
:func:`register_measure`, once per name, with the arguments that name fixes::

    @register_measure("my_sharpness")
    class MySharpness(Measure):
        ...

and is then selected by that name like the library's own.
"""

from typing import Any, Callable, Dict, Tuple, Type, TypeVar

from lit_robust.errors import ConfigurationError, check

from .base import Measure
from .settings import FlatnessSettings

M = TypeVar("M", bound=Type[Measure])
_REGISTRY: Dict[str, Tuple[Type[Measure], Dict[str, Any]]] = {}


def register_measure(name: str, **fixed: Any) -> Callable[[M], M]:
    """Class decorator: register a :class:`~lit_robust.measures.base.Measure` subclass under ``name``.

    Args:
        name: the name (its metric is ``flatness/<name>``); a name is registered once.
        **fixed: the constructor arguments this name stands for (e.g. ``loss="rloss"``).
    """

    def decorate(cls: M) -> M:
        check(isinstance(cls, type) and issubclass(cls, Measure), "register_measure", getattr(cls, "__name__", cls),
              "a subclass of lit_robust.measures.Measure")
        registered = _REGISTRY.get(name)
        if registered is not None and (registered[0].__qualname__, registered[1]) != (cls.__qualname__, fixed):
            raise ConfigurationError(f"measure name {name!r} is already registered for {registered[0].__name__}")
        _REGISTRY[name] = (cls, dict(fixed))
        return cls

    return decorate


def registered_names() -> Tuple[str, ...]:
    """Every registered name, in the order of registration."""
    return tuple(_REGISTRY)


def registered(name: str) -> Tuple[Type[Measure], Dict[str, Any]]:
    """The class and the fixed arguments registered under ``name``.

    Raises:
        ConfigurationError: one line listing the registered names when ``name`` is none of them.
    """
    check(name in _REGISTRY, "measures", name, "a registered measure name: " + ", ".join(_REGISTRY))
    return _REGISTRY[name]


def measure_named(name: str, settings: FlatnessSettings, options: Dict[str, Any]) -> Measure:
    """The measure registered as ``name``, built for a stage of ``FlatnessMonitor`` (see ``Measure.from_settings``)."""
    cls, fixed = registered(name)
    return cls.from_settings(settings, options, **fixed)
