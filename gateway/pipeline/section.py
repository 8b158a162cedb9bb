"""Typed reading of a policy's own TOML table, with errors that name ``section.key``.

Each policy validates its table (``[antivirus]``, ``[rspamd]`` ...) in its
constructor with these helpers, so a bad value fails at start with the key,
the value and what is allowed (maddy's per-module ``Configure``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.values import parse_duration

ON_ERROR_CHOICES = ("tempfail", "pass")


class Section:
    """One policy table. ``name`` is the table name used in error messages."""

    def __init__(self, name: str, table: Mapping[str, Any], known: set[str] | None = None) -> None:
        self.name = name
        self.table = dict(table)
        if known is not None:
            unknown = sorted(set(self.table) - known)
            if unknown:
                raise ConfigError(
                    f"{name}.{unknown[0]}", self.table[unknown[0]], "known keys: " + ", ".join(sorted(known))
                )

    def key(self, key: str) -> str:
        """The dotted name of ``key`` for messages."""
        return f"{self.name}.{key}"

    def text(self, key: str, default: str | None = None) -> str | None:
        """A string value."""
        value = self.table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(self.key(key), value, "a string")
        return value

    def duration(self, key: str, default: float) -> float:
        """Seconds from ``"30s"``, ``"2m"`` or a number."""
        value = self.table.get(key, default)
        try:
            return parse_duration(value)
        except ValueError as error:
            raise ConfigError(self.key(key), value, f"a duration such as 30s or 2m ({error})") from None

    def number(self, key: str, default: float | None) -> float | None:
        """A finite float (ints accepted)."""
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(self.key(key), value, "a number")
        return float(value)

    def whole_number(self, key: str, default: int, least: int = 0) -> int:
        """An integer of at least ``least`` (a bool is not one)."""
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(self.key(key), value, f"a whole number, at least {least}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """A boolean."""
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(key), value, "true or false")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``."""
        value = self.table.get(key, default)
        if value not in choices:
            raise ConfigError(self.key(key), value, "one of " + ", ".join(choices))
        return str(value)

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list of strings."""
        value = self.table.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(key), value, "a list of strings")
        return tuple(value)

    def path(self, key: str, base: Path | None = None) -> Path | None:
        """A file path (relative paths against ``base``)."""
        value = self.text(key)
        if not value:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() or base is None else base / path
