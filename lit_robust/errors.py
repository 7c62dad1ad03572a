"""One exception for bad settings, raised before anything runs or is written."""

import os
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


def check_readable_file(path: Any, setting: str, what: str) -> None:
    """Raise :class:`ConfigurationError` naming ``setting`` unless ``path`` is an existing file this process
    can read.

    Args:
        path: the path that was given.
        setting: the argument's name as the user writes it (e.g. ``study``).
        what: what the file must be (e.g. ``"a study file (YAML with 'runs')"``).
    """
    problem = ("it does not exist" if not os.path.exists(path) else "it is a directory" if os.path.isdir(path)
               else None if os.access(path, os.R_OK) else "it is not readable")
    if problem is not None:
        raise ConfigurationError(f"{setting}={str(path)!r} is not allowed: {problem}; {setting} must be {what}.")


def one_line_error(error: BaseException) -> str:
    """``error`` as ``Type: message`` on one line (a parser's message spans several)."""
    return f"{type(error).__name__}: " + " ".join(str(error).split())
