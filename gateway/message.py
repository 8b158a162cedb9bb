"""Header edits on raw message bytes, leaving the body byte-for-byte intact."""

from __future__ import annotations

import re

from gateway.verdict import HeaderEdit

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_end(raw: bytes) -> int:
    """Offset just past the blank line ending the header section (len(raw) when there is none)."""
    match = _HEADER_END.search(raw)
    return match.end() if match else len(raw)


def apply_edits(raw: bytes, prepend: bytes, edits: tuple[HeaderEdit, ...]) -> bytes:
    """Return ``prepend`` + policy headers + ``raw`` minus removed fields; the body is untouched.

    ``prepend`` is ready-made header bytes (e.g. the Received field) ending in CRLF.
    Removed fields are matched by name, case-insensitively, with their continuation lines.
    """
    added = b"".join(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
                     for edit in edits for name, value in edit.prepend)
    removed = {name.lower().encode() for edit in edits for name in edit.remove}
    if removed:
        raw = _remove_fields(raw, removed)
    return prepend + added + raw


def _remove_fields(raw: bytes, names: set[bytes]) -> bytes:
    end = header_end(raw)
    kept: list[bytes] = []
    dropping = False
    for line in raw[:end].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and kept is not None:
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in names and b":" in line
        if not dropping:
            kept.append(line)
    return b"".join(kept) + raw[end:]
