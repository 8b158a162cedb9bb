"""Header edits on raw message bytes, leaving the body byte-for-byte intact."""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from gateway.verdict import HeaderEdit

_HEADER_END = re.compile(rb"\r?\n\r?\n")

# A message as one bytes object, or as pieces that make it when written one after
# another (:func:`edited_parts`: a large message's body stays a view, not a copy).
MessageText = bytes | Sequence[bytes | memoryview]


def message_parts(message: MessageText) -> Sequence[bytes | memoryview]:
    """``message`` as a sequence of pieces (a single ``bytes`` is one piece)."""
    return (message,) if isinstance(message, bytes) else message


def message_size(message: MessageText) -> int:
    """Octets of ``message``."""
    return len(message) if isinstance(message, bytes) else sum(memoryview(p).nbytes for p in message)


def header_end(raw: bytes) -> int:
    """Offset just past the blank line ending the header section (len(raw) when there is none)."""
    match = _HEADER_END.search(raw)
    return match.end() if match else len(raw)


_RECEIVED_FIELD = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


def received_count(raw: bytes) -> int:
    """Number of ``Received:`` fields in the header section (the hop count, RFC 5321 §6.3).

    Counted in place with one pattern, without splitting the header section into lines.
    """
    return sum(1 for _ in _RECEIVED_FIELD.finditer(raw, 0, header_end(raw)))


def raw_fields(raw: bytes) -> Iterator[bytes]:
    """The header section's fields as raw bytes, each with its continuation lines and line ending.

    A leading line that is not a field (an mbox ``From `` line) comes as one item too.
    """
    end = header_end(raw)
    current = b""
    for line in raw[:end].splitlines(keepends=True):
        if line.strip() == b"":
            break
        if line[:1] in (b" ", b"\t") and current:
            current += line
            continue
        if current:
            yield current
        current = line
    if current:
        yield current


def field_name(field: bytes) -> str:
    """Lower-case name of a raw field ("" when it has no colon)."""
    name, colon, _ = field.partition(b":")
    return name.strip().lower().decode("ascii", "replace") if colon else ""


def unfolded(field: bytes) -> str:
    """``Name: value`` with continuation lines joined (RFC 5322 §2.2.3), surrogate-escaped."""
    text = field.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
    return re.sub(r"\r?\n(?=[ \t])", "", text)


def field_value(field: bytes) -> str:
    """The unfolded value of a raw field, without the leading space."""
    return unfolded(field).partition(":")[2].lstrip(" \t")


def mbox_separator(raw: bytes) -> bytes:
    """A leading Unix mbox ``From `` line (with its line ending), or b"".

    It is not an RFC 5322 field; some clients send one. It stays first, as it
    came, and the gateway's own fields go after it (a field line below it
    would make the header section unparsable for DKIM signers).
    """
    if raw.startswith(b"From "):
        end = raw.find(b"\n")
        return raw[:end + 1] if end >= 0 else raw
    return b""


def insert_fields(raw: bytes, fields: bytes) -> bytes:
    """Put ready-made header ``fields`` (CRLF-terminated) on top of ``raw`` (after an mbox separator)."""
    separator = mbox_separator(raw)
    return separator + fields + raw[len(separator):]


def apply_edits(raw: bytes, prepend: bytes, edits: tuple[HeaderEdit, ...]) -> bytes:
    """Return ``prepend`` + policy headers + ``raw`` with fields removed/replaced; the body is untouched.

    ``prepend`` is ready-made header bytes (e.g. the Received field) ending in CRLF;
    they go below a leading mbox separator line (:func:`mbox_separator`).
    """
    return b"".join(edited_parts(raw, prepend, edits))


def edited_parts(raw: bytes, prepend: bytes, edits: tuple[HeaderEdit, ...]) -> list[bytes | memoryview]:
    """:func:`apply_edits` as pieces to write one after another, the body a view of ``raw``, not a copy.

    Joined, the pieces are exactly what :func:`apply_edits` returns; a large
    message is then written to the spool without a second copy of it in memory.
    """
    added = b"".join(_encode_field(name, value) for edit in edits for name, value in edit.prepend)
    removed = {name.lower() for edit in edits for name in edit.remove}
    replaced = {name.lower(): (name, value) for edit in edits for name, value in edit.replace}
    dropped = [field for edit in edits for field in edit.drop]
    head, rest = b"", 0
    if removed or replaced or dropped:
        head, rest = _rewrite(raw, removed, replaced, dropped)
        missing = [pair for key, pair in replaced.items() if key not in _names(head)]
        added += b"".join(_encode_field(name, value) for name, value in missing)
        separator = mbox_separator(head)
        head = head[len(separator):]
    else:
        separator = mbox_separator(raw)
        rest = len(separator)
    return [separator, prepend + added, head, memoryview(raw)[rest:]]


def _encode_field(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


def _names(raw: bytes) -> set[str]:
    return {field_name(field) for field in raw_fields(raw)}


def _rewrite(raw: bytes, removed: set[str], replaced: dict[str, tuple[str, str]], dropped: list[bytes]
             ) -> tuple[bytes, int]:
    """The header fields kept (rewritten where replaced), and the offset in ``raw`` where the rest begins."""
    kept: list[bytes] = []
    done: set[str] = set()
    total = 0
    for field in raw_fields(raw):
        total += len(field)
        name = field_name(field)
        bare = field.rstrip(b"\r\n")
        if bare in dropped:
            dropped.remove(bare)
            continue
        if name in removed:
            continue
        if name in replaced and name not in done:
            done.add(name)
            field = _encode_field(*replaced[name])
        kept.append(field)
    return b"".join(kept), total
