"""DKIM relaxed body canonicalization and body hash in one streaming pass (RFC 6376 §3.4.4, §3.7).

The message is read as chunks (a small one is one chunk; a large one comes
from its file, :class:`gateway.message.FileText`), so signing a 50 MB message
never holds it whole. The body is hashed as the relay client sends it (CRLF,
then a lone CR, become LF, every LF becomes CRLF, a last line gets its CRLF:
:func:`gateway.relay.client.data_chunks`), since that is what a receiver
verifies; for a message whose line ends are all CRLF or LF the result equals
dkimpy's ``Relaxed.canonicalize_body`` of dkimpy's parse of the same message
(trailing white space removed, runs of white space made one space, trailing
empty lines removed); the unit tests compare the two over the corpus.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

from gateway.message import crlf_line_ends, whole_lines

_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
# White space to make one space: a run with a tab or of two or more octets (a lone space stays as it is,
# which is the same result as replacing every run, without a replacement per word)
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
CRLF = b"\r\n"


def split_header(chunks: Iterable[bytes | memoryview]) -> tuple[bytes, bytes, Iterator[bytes | memoryview]]:
    """The header section (up to and including its empty line), the start of the body, the remaining chunks.

    The header section ends at the first empty line, where dkimpy's parse
    ends it (lines split at ``\\r?\\n``). A message without an empty line is all
    header; one that starts with an empty line has an empty header section.
    """
    rest = iter(chunks)
    buffer = b""
    for chunk in rest:
        buffer += chunk
        if buffer[:1] == b"\n" or buffer[:2] == CRLF:
            return b"", buffer, rest
        found = _HEADER_END.search(buffer)
        if found:
            return buffer[: found.end()], buffer[found.end() :], rest
    return buffer, b"", rest


def relaxed_headers(headers: list[list[bytes]]) -> list[tuple[bytes, bytes]]:
    """``(name, value)`` pairs canonicalized as dkimpy's ``Relaxed.canonicalize_headers`` (RFC 6376 §3.4.2).

    Names lower case without trailing white space; values unfolded, white space
    runs made one space, stripped, ending in CRLF.
    """
    return [(name.lower().rstrip(), _relaxed_value(value)) for name, value in headers]


def _relaxed_value(value: bytes) -> bytes:
    value = value.replace(CRLF, b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:  # else the substitution would change nothing
        value = _WSP_RUN.sub(b" ", value)
    return value.strip() + CRLF


def relaxed_body_hash(chunks: Iterable[bytes | memoryview]) -> bytes:
    """SHA-256 digest of the relaxed-canonicalized body read from ``chunks`` (32 octets).

    Memory: one chunk plus the part of a line that runs over it.
    """
    digest = hashlib.sha256()
    held = 0  # empty lines seen after the last line with text: hashed only if text follows
    for lines in whole_lines(chunks):
        # the line ends the relay client sends, and a last line without one gets CRLF: receivers hash those
        lines = crlf_line_ends(lines)
        if not lines.endswith(CRLF):
            lines += CRLF
        if b"\t" in lines or b"  " in lines or b" \r" in lines:  # else both passes would change nothing
            lines = _WSP_RUN.sub(b" ", _TRAILING_WSP.sub(CRLF, lines))
        text_end = len(lines)
        while lines.endswith(CRLF, 0, text_end):
            text_end -= 2
        if text_end == 0:
            held += len(lines) // 2
            continue
        digest.update(CRLF * held + lines[: text_end + 2])
        held = (len(lines) - text_end - 2) // 2
    return digest.digest()
