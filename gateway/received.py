"""The ``Received:`` trace header field (RFC 5321 §4.4, RFC 3848 protocol types)."""

from __future__ import annotations

import re
from email.utils import format_datetime
from datetime import datetime, timezone

from gateway.envelope import ClientInfo

_UNSAFE = re.compile(r"[^\x21-\x7e]")


def protocol_name(extended: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """RFC 3848 / RFC 6531 ``with`` keyword: SMTP, ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS ..."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(client: ClientInfo, *, by_host: str, queue_id: str, recipients: list[str],
                    extended: bool, smtputf8: bool, now: float) -> bytes:
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
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    if len(recipients) == 1 and not _UNSAFE.search(recipients[0]):
        lines.append(f"\tfor <{recipients[0]}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
