"""aiosmtpd's own replies as the gateway sends them: each given its RFC 3463 enhanced status code.

aiosmtpd writes some replies itself (``503 Error: need MAIL command``, syntax
errors, STARTTLS); :func:`enhance` maps each of its texts to the line we send,
from this table or, for a text it does not know, by adding ``X.0.0``. Together
with :mod:`gateway.reply` this is the catalogue of what the SMTP edge says.
"""

from __future__ import annotations

import functools
import re

from gateway import reply as replies

_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_BASIC = re.compile(r"^([2345]\d\d)([ -])(.*)$", re.S)

# aiosmtpd's own texts mapped to RFC 3463 codes (and friendlier words).
_KNOWN = [
    (re.compile(r"^500 (Error: )?(Command line too long|Line too long.*)$"), str(replies.LINE_TOO_LONG)),
    (re.compile(r"^500 Error: bad syntax$"), "500 5.5.2 Error: bad syntax"),
    (re.compile(r"^500 Error: strict ASCII mode$"), "500 5.6.7 Error: non-ASCII input without SMTPUTF8"),
    (re.compile(r'^500 Error: command "(.*)" not recognized$'), r"502 5.5.2 Error: command not recognized"),
    (re.compile(r"^503 Error: send (\w+) first$"), r"503 5.5.1 Error: send \1 first"),
    (re.compile(r"^503 Error: need MAIL command$"), "503 5.5.1 Error: need MAIL command"),
    (re.compile(r"^503 Error: need RCPT command$"), "503 5.5.1 Error: need RCPT command"),
    (re.compile(r"^503 Error: nested MAIL command$"), "503 5.5.1 Error: nested MAIL command"),
    (
        re.compile(r"^552 Error: (message size exceeds fixed maximum message size|Too much mail data)$", re.I),
        str(replies.MESSAGE_TOO_BIG),
    ),
    (re.compile(r"^530 Must issue a STARTTLS command first$"), str(replies.TLS_REQUIRED)),
    (re.compile(r"^554 Command refused due to lack of security$"), "554 5.7.0 Error: TLS handshake failed"),
    (re.compile(r"^454 TLS not available$"), "454 4.7.0 TLS not available"),
    (re.compile(r"^220 Ready to start TLS$"), "220 2.0.0 Ready to start TLS"),
    (re.compile(r"^501 (.*)$"), r"501 5.5.4 \1"),
    (re.compile(r"^555 (.*)$"), r"555 5.5.4 \1"),
    (re.compile(r"^502 (EXPN|Could not VRFY).*$"), "502 5.5.1 Error: command not implemented"),
]


# Pure function of the line, and the same few lines (354, 221, 250 OK ...) come
# back in every transaction: skip the pattern walk for them.
@functools.lru_cache(maxsize=512)
def enhance(line: str) -> str:
    """Add an RFC 3463 enhanced code to a reply line that lacks one.

    Greeting (220 banner) and EHLO/HELO lines are left alone by the caller
    (RFC 2034 §3 excludes them); 3xx intermediate replies have no enhanced code.
    """
    if _HAS_ENHANCED.match(line):
        return line
    for pattern, replacement in _KNOWN:
        if pattern.match(line):
            return pattern.sub(replacement, line)
    match = _BASIC.match(line)
    if not match or match.group(1)[0] == "3":
        return line
    code, sep, text = match.groups()
    return f"{code}{sep}{code[0]}.0.0 {text}"


def is_greeting(line: str, hostname: str) -> bool:
    """Whether ``line`` is aiosmtpd's greeting, ``220 <hostname> ...`` (it keeps no enhanced code, RFC 2034 §3)."""
    return line.startswith(f"220 {hostname}")
