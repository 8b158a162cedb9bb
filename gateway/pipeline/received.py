"""The ``Received:`` trace header field (RFC 5321 §4.4, RFC 3848 protocol types)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import format_datetime

from gateway.envelope import ClientInfo

_UNSAFE = re.compile(r"[^\x21-\x7e]")

# The last formatted second: (unix second, RFC 5322 date). One tuple, replaced
# whole, so a reader in another thread sees a matching pair.
_last_date: tuple[int, str] = (-1, "")

# 1970-01-01 .. 9999-12-31: the fast path's range; outside it (and for NaN) the
# plain computation runs and raises what it raises.
_MAX_TIMESTAMP = 253402300800.0


def rfc5322_date(now: float) -> str:
    """``email.utils.format_datetime`` of ``now`` (unix seconds) in UTC, e.g. ``Tue, 14 Nov 2023 22:13:20 +0000``.

    Byte-identical to ``format_datetime(datetime.fromtimestamp(now, timezone.utc))``,
    formatted once per whole second instead of once per message.
    """
    global _last_date
    if not 0.0 <= now < _MAX_TIMESTAMP:
        return format_datetime(datetime.fromtimestamp(now, UTC))
    second = math.floor(now)
    if now - second >= 0.999:
        # fromtimestamp rounds to whole microseconds (half to even), which can
        # carry into the next second: let it decide.
        return format_datetime(datetime.fromtimestamp(now, UTC))
    cached = _last_date
    if cached[0] != second:
        cached = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
        _last_date = cached
    return cached[1]


def protocol_name(extended: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """RFC 3848 / RFC 6531 ``with`` keyword: SMTP, ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS ..."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(
    client: ClientInfo,
    *,
    by_host: str,
    queue_id: str,
    recipients: list[str],
    extended: bool,
    smtputf8: bool,
    now: float,
) -> bytes:
    """One folded ``Received:`` field ending in CRLF, Postfix style.

    ``for <rcpt>`` is given only for a single recipient (RFC 5321 §7.2: it must
    not reveal other recipients). The HELO name is reduced to printable ASCII.
    """
    helo = _UNSAFE.sub("?", client.helo or "unknown")[:255]
    lines = [f"Received: from {helo} (unknown [{client.address}])"]
    if client.tls_version:
        lines.append(f"\t(using {client.tls_version} with cipher {client.tls_cipher or 'unknown'})")
    with_name = protocol_name(extended, bool(client.tls_version), bool(client.auth_user), smtputf8)
    lines.append(f"\tby {by_host} (gateway) with {with_name} id {queue_id}")
    date = rfc5322_date(now)
    if len(recipients) == 1 and not _UNSAFE.search(recipients[0]):
        lines.append(f"\tfor <{recipients[0]}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
