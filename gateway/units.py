"""Postfix-style durations and sizes.

Durations follow Postfix ``main.cf`` time units (postconf(5) "time units"):
a number with an optional suffix ``s`` (seconds, the default), ``m`` (minutes),
``h`` (hours), ``d`` (days) or ``w`` (weeks). Sizes are bytes with an optional
``k``, ``M`` or ``G`` suffix (powers of 1024).
"""

from __future__ import annotations

import math
import re

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[bB]?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: str | int | float) -> float:
    """Return seconds for ``"5d"``, ``"300s"``, ``"10m"``, ``"1.5h"``, ``300`` or ``0.5``.

    Raises:
        ValueError: when the value is negative or not of that form.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a finite, non-negative number of seconds")
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 300s, 10m, 2h, 5d or 1w")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: str | int) -> int:
    """Return bytes for ``10240000``, ``"50M"``, ``"512k"`` or ``"1G"``.

    Raises:
        ValueError: when the value is negative or not of that form.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size such as 10240000, 512k, 50M or 1G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_duration(seconds: float) -> str:
    """Format seconds the short Postfix way (``"5d"``, ``"300s"``) for logs and check-config."""
    for suffix, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{suffix}"
    return f"{seconds:g}s"
