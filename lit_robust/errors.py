"""One exception for bad settings, raised before anything runs or is written."""

from typing import Any


class ConfigurationError(ValueError):
    """A setting has a value that is not allowed; the message names the setting and what is allowed."""


def check(condition: bool, setting: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigurationError` naming ``setting`` unless ``condition`` holds.

    Args:
        condition: whether the value is acceptable.
        setting: the argument's name as the user writes it (e.g. ``epsilon``).
        value: the value that was given.
        allowed: a short description of the allowed values (e.g. ``"a number > 0"``).
    """
    if not condition:
        raise ConfigurationError(f"{setting}={value!r} is not allowed: {setting} must be {allowed}.")


def check_choice(value: Any, setting: str, choices) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    check(value in choices, setting, value, "one of " + ", ".join(repr(c) for c in choices))
