"""RFC 5322 text for the DSNs: header fields, folding, MIME boundaries, dates, addresses (RFC 6533).

What :mod:`gateway.relay.bounce` writes is built of these: CRLF line endings and
no line over 998 octets (RFC 5322 §2.1.1).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime

MAX_LINE = 998  # RFC 5322 §2.1.1, octets without CRLF
FOLD_AT = 78  # RFC 5322 §2.1.1 "SHOULD" limit, used for the fields we write
FORBIDDEN_CHARS = ("\r", "\n", "\x00")


def xtext(text: str) -> str:
    """RFC 3461 §4 xtext: ``+``, ``=``, controls, space and non-ASCII (as UTF-8 octets) become ``+HH``."""
    return "".join(
        chr(octet) if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D) else f"+{octet:02X}"
        for octet in text.encode("utf-8", "surrogateescape")
    )


def address_field(address: str) -> str:
    """``rfc822; addr`` for ASCII, else ``utf-8; <utf-8-addr-xtext>`` (RFC 6533 §3)."""
    if address.isascii():
        return f"rfc822; {address}"
    out = []
    for char in unicode(address):
        code = ord(char)
        if 0x21 <= code <= 0x7E and char not in "\\+=":
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{{{code:02X}}}")  # HEXPOINT: two digits below 0x80
        else:
            out.append(f"\\x{{{code:X}}}")  # HEXPOINT: no leading zeros
    return "utf-8; " + "".join(out)


def ascii_escape(text: str) -> str:
    """Make free text ASCII for a delivery-status field: non-ASCII and controls as ``\\x{HEX}``."""
    return "".join(
        char if (0x20 <= ord(char) <= 0x7E or char == "\t") else f"\\x{{{ord(char):02X}}}" for char in unicode(text)
    )


def unicode(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes from the wire) made U+FFFD."""
    return utf8(text).decode("utf-8", "replace")


def utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``, restoring bytes kept as surrogate escapes by a decoder."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def fields(fields: Iterable[tuple[str, str]]) -> bytes:
    """Serialise ``(name, value)`` header fields, folded, each ending in CRLF."""
    return b"".join(fold(utf8(f"{name}: {value}"), FOLD_AT) for name, value in fields)


def fold(line: bytes, width: int) -> bytes:
    """Fold one unfolded header line (no CRLF) into lines of at most ``width`` octets.

    Folds before whitespace (RFC 5322 §2.2.3) where it can: at the last break within
    ``width``, else at the first one after it that keeps the line within 998 octets.
    A run with no whitespace longer than that is cut and continued after an
    inserted space — it changes the value, but only for input no mail system could
    transport unfolded anyway.

    Returns:
        The folded line(s), CRLF after each.
    """
    out = []
    while len(line) > width:
        breaks = [
            i
            for i in range(1, min(len(line) - 1, MAX_LINE + 1))
            if line[i] in b" \t" and line[i + 1] not in b" \t" and line[:i].strip()
        ]
        within = [i for i in breaks if i <= width]
        if within:
            cut = within[-1]
            out.append(line[:cut])
            line = line[cut:]
        elif breaks:
            cut = breaks[0]
            out.append(line[:cut])
            line = line[cut:]
        elif len(line) > MAX_LINE:
            cut = MAX_LINE - 2
            while cut > 1 and 0x80 <= line[cut] < 0xC0:  # do not split a UTF-8 sequence
                cut -= 1
            out.append(line[:cut])
            line = b" " + line[cut:]
        else:
            break
    out.append(line)
    return b"".join(part + b"\r\n" for part in out)


def boundary(bodies: Iterable[bytes]) -> str:
    """A MIME boundary (RFC 2046 §5.1.1, <= 70 chars) that occurs in none of ``bodies``."""
    contents = list(bodies)
    while True:
        boundary = f"=_dsn_{secrets.token_hex(16)}"
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in body for body in contents):
            return boundary


def rfc5322_date(timestamp: float) -> str:
    """RFC 5322 §3.3 date-time in UTC (``+0000``) for unix seconds."""
    try:
        return format_datetime(datetime.fromtimestamp(timestamp, tz=UTC))
    except (OverflowError, OSError) as exc:
        raise ValueError(f"{timestamp!r} is not a valid timestamp") from exc


def check_line(name: str, value: str) -> None:
    """Raise ValueError when ``value`` could inject a header line."""
    if any(char in value for char in FORBIDDEN_CHARS):
        raise ValueError(f"{name} contains CR, LF or NUL: {value!r}")
