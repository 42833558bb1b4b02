"""User-facing error type shared by config, sweep and launcher code."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Sequence


class ConfigError(ValueError):
    """A user mistake in a config or sweep file.

    The message always names the file (when known), the key path, the bad value and what is
    allowed, so a researcher can fix the YAML without reading code. The CLI prints it and exits
    with status 2.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        prefix = f"{source}: " if source else ""
        super().__init__(one_line(prefix + message))


class AnotherRun(ConfigError):
    """The run directory (its config.yaml or a checkpoint) holds a different run: refused
    before anything is written. The directory is not this process's to record a failure in."""


#: an error names the bad value, which may be a huge list from a file; the CLI prints one line
MAX_MESSAGE_CHARS = 2000


def one_line(message: str) -> str:
    """`message` on one line, its middle left out beyond MAX_MESSAGE_CHARS (the start names the
    file and key, the end what is allowed)."""
    text = " ".join(message.splitlines())
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    head, tail = MAX_MESSAGE_CHARS * 2 // 3, MAX_MESSAGE_CHARS // 3
    return f"{text[:head]} ...({len(text) - head - tail} characters left out)... {text[-tail:]}"


def unknown_key(source: str | None, where: str, key: object,
                valid: Sequence[str]) -> ConfigError:
    """`where.key: unknown key; did you mean '...'? Valid keys here: ...` (config and sweeps)."""
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    path = f"{where}.{key}" if where else str(key)
    return ConfigError(f"{path}: unknown key{hint} Valid keys here: {', '.join(valid)}",
                       source=source, key=path)


def env_number(name: str, allowed: str, ok: Callable[[float], bool]) -> float | None:
    """The number an environment variable holds (None when unset or blank); a value that is
    not a number, or that `ok` refuses, is a ConfigError naming the variable, the value and
    `allowed` (e.g. "a number of GiB > 0")."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not ok(value):
        raise ConfigError(f"{name}: {text!r} is not allowed; expected {allowed}", key=name)
    return value
