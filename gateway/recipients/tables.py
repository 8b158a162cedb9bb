"""Postfix text tables (the source form of a ``hash:`` map) and the lookup order of an address in them.

One ``key value`` a line: the key, white space, the rest of the line as the
value (``value`` may be absent where the table only lists keys). Blank lines and
lines whose first non-space character is ``#`` are skipped, a ``#`` after white
space starts a comment, and a line that starts with white space continues the
one before (postmap(1)). Keys compare without regard to case, as Postfix
lower-cases every lookup.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.errors import ConfigError

_COMMENT = re.compile(r"\s#.*$")


def read_table(path: Path, key: str, *, values_required: bool = True) -> dict[str, str]:
    """The ``key -> value`` lines of the file at ``path`` (a later line for the same key wins).

    Args:
        path: the table.
        key: the config key naming it, for errors.
        values_required: refuse a line with a key and no value.

    Raises:
        ConfigError: naming ``key``: the file cannot be read, or a line has no value where one is required.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise ConfigError(key, str(path), f"a readable table ({error})") from None
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        line = _COMMENT.sub("", line).rstrip()
        if line[:1].isspace() and logical:
            logical[-1] = (logical[-1][0], logical[-1][1] + " " + line.strip())
        else:
            logical.append((number, line.strip()))
    table: dict[str, str] = {}
    for number, line in logical:
        fields = line.split(None, 1)
        value = fields[1].strip() if len(fields) > 1 else ""
        if values_required and not value:
            raise ConfigError(key, str(path), f"'key value' lines (line {number} has no value for {fields[0]})")
        table[fields[0].lower()] = value
    return table


def split_extension(address: str, delimiter: str) -> tuple[str, str]:
    """``(user@domain, "+ext")`` for ``user+ext@domain`` with delimiter ``+``; ``(address, "")`` when there is none.

    The delimiter's first occurrence in the local part splits it (Postfix ``recipient_delimiter``);
    a local part that starts with it has no extension.
    """
    local, at, domain = address.rpartition("@")
    if not at or not delimiter:
        return address, ""
    cut = min((index for index in (local.find(d) for d in delimiter) if index > 0), default=-1)
    if cut < 0:
        return address, ""
    return f"{local[:cut]}@{domain}", local[cut:]


def lookup_order(address: str, delimiter: str) -> list[tuple[str, str]]:
    """The keys to look ``address`` up by, in Postfix's order, each with the extension it leaves unmatched.

    ``user+ext@domain``, then ``user@domain`` (extension ``+ext``), then ``@domain``; all lower case.
    """
    address = address.lower()
    keys = [(address, "")]
    base, extension = split_extension(address, delimiter)
    if extension:
        keys.append((base, extension))
    domain = address.rpartition("@")[2]
    if domain:
        keys.append(("@" + domain, ""))
    return keys
