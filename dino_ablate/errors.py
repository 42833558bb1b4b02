"""User-facing error type shared by config, sweep and launcher code."""

from __future__ import annotations


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
        super().__init__(prefix + message)
