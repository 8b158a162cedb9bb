"""Message text: header edits on raw bytes (the body left byte-for-byte intact), and large messages in files.

A message up to a size is one ``bytes`` object; a larger one stays in a file
(:class:`FileText`) from the DATA reader to the relay client, and is walked in
bounded chunks (:data:`CHUNK_BYTES`) wherever all of it is needed.
"""

from __future__ import annotations

import io
import mmap
import os
import re
from collections.abc import Iterable, Iterator, Sequence

from gateway.verdict import HeaderEdit

_HEADER_END = re.compile(rb"\r?\n\r?\n")
CHUNK_BYTES = 1 << 20  # octets of a file-held message read at a time


class FileText(mmap.mmap):
    """A message held in a file, mapped read-only: a bytes-like object for reading parts of it.

    Slicing, ``len``, ``find`` and regular expressions work as on ``bytes``
    (what the policies do with the header section touches only those pages);
    whatever needs all of it (the spool commit, checksums, the relay client,
    the scanners) reads through :meth:`chunks` or :meth:`reader` instead, so
    a 50 MB message never costs 50 MB of memory. Owns a duplicate of ``fd``,
    closed when the object is collected (a commit that outlives the SMTP
    session keeps it alive through its :class:`FileSpan`).

    Args:
        fd: an open file descriptor (read access), duplicated.
        size: octets of the message, from offset 0; above zero.

    Raises:
        OSError: the file cannot be mapped.
    """

    fd: int

    def __new__(cls, fd: int, size: int) -> FileText:
        self = super().__new__(cls, fd, size, access=mmap.ACCESS_READ)
        self.fd = os.dup(fd)
        return self

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1

    def chunks(self, start: int = 0, end: int | None = None, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Octets ``start`` to ``end`` (default: the end) in pieces of at most ``size``, read with pread."""
        end = len(self) if end is None else end
        while start < end:
            piece = os.pread(self.fd, min(size, end - start), start)
            if not piece:
                raise OSError(f"message file ends at {start} of {end} octets")
            start += len(piece)
            yield piece

    def reader(self) -> io.BufferedReader:
        """A file object over the whole message with a position of its own (pread: concurrent readers are safe)."""
        return io.BufferedReader(_PreadIO(self), CHUNK_BYTES // 16)


class _PreadIO(io.RawIOBase):
    def __init__(self, text: FileText) -> None:
        self.text = text  # kept alive while read
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), len(self.text) - self.position)
        if wanted <= 0:
            return 0
        got = os.preadv(self.text.fd, [memoryview(buffer)[:wanted]], self.position)
        self.position += got
        return got


class FileSpan:
    """A piece of a message to write: ``length`` octets of ``text`` from ``offset`` (copied by the kernel)."""

    __slots__ = ("text", "offset", "length")

    def __init__(self, text: FileText, offset: int, length: int) -> None:
        self.text, self.offset, self.length = text, offset, length

    def chunks(self) -> Iterator[bytes]:
        """Its octets in bounded pieces."""
        return self.text.chunks(self.offset, self.offset + self.length)


# A message as one bytes object, a file-held message, or pieces that make it when written one
# after another (:func:`edited_parts`: a large message's body stays a view or file span, not a copy).
MessageText = bytes | FileText | Sequence[bytes | memoryview | FileSpan]
Piece = bytes | memoryview | FileSpan


def message_parts(message: MessageText) -> Sequence[Piece]:
    """``message`` as a sequence of pieces (a single ``bytes`` is one piece, a :class:`FileText` one span)."""
    if isinstance(message, FileText):
        return (FileSpan(message, 0, len(message)),)
    return (message,) if isinstance(message, bytes) else message


def piece_size(piece: Piece) -> int:
    """Octets of one piece."""
    return piece.length if isinstance(piece, FileSpan) else memoryview(piece).nbytes


def message_size(message: MessageText) -> int:
    """Octets of ``message``."""
    if isinstance(message, (bytes, FileText)):
        return len(message)
    return sum(piece_size(piece) for piece in message)


def piece_chunks(piece: Piece) -> Iterator[bytes | memoryview]:
    """The octets of one piece in bounded chunks (a bytes piece as it is)."""
    if isinstance(piece, FileSpan):
        yield from piece.chunks()
    else:
        yield piece


def whole_bytes(message: MessageText) -> bytes:
    """All of ``message`` as one ``bytes`` object (a small message's pieces; the few readers that need all: dkimpy)."""
    if isinstance(message, bytes):
        return message
    parts = message_parts(message)
    if not any(isinstance(piece, FileSpan) for piece in parts):
        return b"".join(parts)  # type: ignore[arg-type]  # no FileSpan: bytes and memoryviews only
    return b"".join(chunk for piece in parts for chunk in piece_chunks(piece))


def crlf_line_ends(text: bytes) -> bytes:
    """``text`` with the line ends an SMTP client sends: CRLF, then a lone CR, become LF; every LF becomes CRLF.

    aiosmtplib's ``LINE_ENDINGS_REGEX`` as byte replacements. The relay client
    sends this (:func:`gateway.relay.client.data_chunks`), so the DKIM body hash
    (:mod:`gateway.dkim.canon`) is taken over it too.
    """
    return text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def whole_lines(chunks: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """``chunks`` re-cut right after their last LF: each piece ends in LF but the last, which is the
    text after the final LF (only when there is some). A line running over a chunk is carried, not split.
    """
    carry = b""
    for chunk in chunks:
        data = carry + chunk if carry else bytes(chunk)
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        yield carry


def header_end(raw: bytes | FileText) -> int:
    """Offset just past the blank line ending the header section (len(raw) when there is none).

    A message that starts with the blank line has an empty header section (offset 2, or 1 for a bare LF).
    """
    if raw[:1] == b"\n":
        return 1
    if raw[:2] == b"\r\n":
        return 2
    match = _HEADER_END.search(raw)
    return match.end() if match else len(raw)


_BARE_CR = re.compile(rb"\r(?!\n)")


def header_has_bare_cr(raw: bytes | FileText, end: int | None = None) -> bool:
    """True when the header section has a CR not followed by LF (RFC 5322 §2.2 allows CR only in CRLF).

    ``end`` is :func:`header_end` of ``raw`` when the caller has it already. The
    relay client sends such a CR as a line end (:func:`crlf_line_ends`), so inside
    a header field it would start a new field at the next hop that no check here has seen.
    """
    return _BARE_CR.search(raw, 0, header_end(raw) if end is None else end) is not None


_RECEIVED_FIELD = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


def received_count(raw: bytes | FileText, end: int | None = None) -> int:
    """Number of ``Received:`` fields in the header section (the hop count, RFC 5321 §6.3).

    Counted in place with one pattern, without splitting the header section into
    lines; ``end`` is :func:`header_end` of ``raw`` when the caller has it already.
    """
    return sum(1 for _ in _RECEIVED_FIELD.finditer(raw, 0, header_end(raw) if end is None else end))


def raw_fields(raw: bytes | FileText, end: int | None = None) -> Iterator[bytes]:
    """The header section's fields as raw bytes, each with its continuation lines and line ending.

    A leading line that is not a field (an mbox ``From `` line) comes as one item too.
    ``end`` is :func:`header_end` of ``raw`` when the caller has it already.
    """
    end = header_end(raw) if end is None else end
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


def mbox_separator(raw: bytes | FileText) -> bytes:
    """A leading Unix mbox ``From `` line (with its line ending), or b"".

    It is not an RFC 5322 field; some clients send one. It stays first, as it
    came, and the gateway's own fields go after it (a field line below it
    would make the header section unparsable for DKIM signers).
    """
    if raw[:5] == b"From ":  # slicing: works on a FileText too
        end = raw.find(b"\n")
        return raw[: end + 1] if end >= 0 else raw[:]
    return b""


def insert_fields(raw: bytes, fields: bytes) -> bytes:
    """Put ready-made header ``fields`` (CRLF-terminated) on top of ``raw`` (after an mbox separator)."""
    separator = mbox_separator(raw)
    return separator + fields + raw[len(separator) :]


def apply_edits(raw: bytes, prepend: bytes, edits: tuple[HeaderEdit, ...]) -> bytes:
    """Return ``prepend`` + policy headers + ``raw`` with fields removed/replaced; the body is untouched.

    ``prepend`` is ready-made header bytes (e.g. the Received field) ending in CRLF;
    they go below a leading mbox separator line (:func:`mbox_separator`).
    """
    return whole_bytes(edited_parts(raw, prepend, edits))


def edited_parts(raw: bytes | FileText, prepend: bytes, edits: tuple[HeaderEdit, ...]) -> list[Piece]:
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
        head = head[len(separator) :]
    else:
        separator = mbox_separator(raw)
        rest = len(separator)
    body: Piece = FileSpan(raw, rest, len(raw) - rest) if isinstance(raw, FileText) else memoryview(raw)[rest:]
    return [separator, prepend + added, head, body]


def _encode_field(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


def _names(raw: bytes) -> set[str]:
    return {field_name(field) for field in raw_fields(raw)}


def _rewrite(
    raw: bytes | FileText, removed: set[str], replaced: dict[str, tuple[str, str]], dropped: list[bytes]
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
