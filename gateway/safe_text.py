"""Text from the network made safe to show: control characters visible, never acted on.

A header, an address or a next hop's reply can carry terminal escape
sequences (an OSC title, a screen clear, an OSC 52 clipboard write), C1
controls (U+009B is CSI to many terminals), line and paragraph separators, or
bytes that are not UTF-8. Before such text reaches an operator's terminal it
goes through :func:`printable`, which shows them the way ``cat -v`` does.
"""

from __future__ import annotations

import re

# C0 but tab, DEL, C1, LINE/PARAGRAPH SEPARATOR, and surrogates (undecodable bytes kept by surrogateescape).
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same with tab: never in an address or a host name, which are then neither deliverable nor safe to log.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC -> ^[, CR -> ^M
    if code == 0x7F:
        return "^?"
    if code <= 0x9F:
        return "M-^" + chr(code - 0x80 + 0x40)  # U+009B -> M-^[ (cat -v)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # a byte that was not UTF-8
    return f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character shown, not sent: ``cat -v`` notation.

    C0 controls but tab become ``^X`` (ESC is ``^[``, LF ``^J``), DEL ``^?``,
    C1 controls ``M-^X``; U+2028, U+2029 and lone surrogates become ``\\uXXXX``,
    except the surrogates ``surrogateescape`` makes of undecodable bytes, which
    become ``\\xNN``. Everything else, other scripts included, is kept.
    """
    return _UNSAFE.sub(_shown, text)
