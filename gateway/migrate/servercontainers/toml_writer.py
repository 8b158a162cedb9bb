"""A small TOML 1.0 writer (tomllib reads only)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    """A TOML basic string (TOML 1.0 §String): escapes for quote, backslash and control characters."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # "5.0", "1e-05": both valid TOML floats
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _emit(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    for name, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(str(name))} = {_value(value)}")
    for name, value in table.items():
        if isinstance(value, Mapping):
            lines.append("")
            lines.append("[" + ".".join(_key(p) for p in [*path, str(name)]) + "]")
            _emit(value, [*path, str(name)], lines)
    for name, value in table.items():
        if _is_table_array(value):
            for item in value:
                lines.append("")
                lines.append("[[" + ".".join(_key(p) for p in [*path, str(name)]) + "]]")
                _emit(item, [*path, str(name)], lines)


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize ``data`` as TOML 1.0: strings, booleans, ints, floats, lists, tables, arrays of tables.

    Keys of a table are written before its sub-tables, so the output reads back
    (``tomllib.loads``) to the same dict.

    Raises:
        TypeError: for a value of another type (None, dates, objects).
    """
    lines: list[str] = []
    _emit(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"
