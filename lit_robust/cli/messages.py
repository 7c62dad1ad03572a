"""Error messages of the command line on one line: the :class:`ConfigurationError` behind what LightningCLI and
jsonargparse raise, and jsonargparse's nested messages without the lists of types they tried."""

import re
from typing import Optional

from lit_robust.errors import ConfigurationError


def configuration_error(error: BaseException) -> Optional[ConfigurationError]:
    """The :class:`ConfigurationError` behind ``error``: itself, a cause, or one named in jsonargparse's
    message when it wraps the error of a class it failed to instantiate."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigurationError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


UNION_ERROR = "Does not validate against any of the Union subtypes"
NOISE = (UNION_ERROR, "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'NoneType'>")


def one_line(message: str) -> str:
    """jsonargparse's nested error message on one line: the setting and what is wrong with it, without the
    lists of types it tried."""
    parts, given = [], None
    for line in message.splitlines():
        line = line.strip()
        if not line or line.startswith(NOISE):
            continue
        if line.startswith("Given value:"):
            given = given or line[len("Given value:"):].strip()
            continue
        line = re.sub(r'^(- )?Parser key "([^"]+)":', r"\1\2:", line)
        line = line[2:] if line.startswith("- ") else line
        if line not in parts:
            parts.append(line)
    text = " ".join(parts)
    if given and "NestedArg(" not in given and given not in text:
        text += f" (given: {given})"
    return text
