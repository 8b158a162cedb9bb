"""Backscatter: a forged sender of mail from an untrusted client gets small DSNs, and only so many.

Issue 18: an untrusted client that forged ``MAIL FROM:<victim@third-party>`` to
a local recipient the next hop refused made the gateway send the victim a
77 KB DSN with all of the attacker's headers, as often as the attacker liked.
"""

from __future__ import annotations

import smtplib

from gateway.relay.bounce import UNTRUSTED_HEADER_LIMIT
from gateway.relay.dsn_rate import DSN_COUNT
from tests.harness.helpers import relay_config

ATTACKER = "127.0.0.3"  # untrusted: may only send to relay_domains (example.net)
VICTIM = "victim@third-party.example"
JUNK = b"".join(b"X-Junk-%04d: %s\r\n" % (n, b"j" * 60) for n in range(1000))  # about 77 kB of headers


def _send(port: int, source: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        refused = client.sendmail(
            VICTIM, ["nobody@example.net"], b"Subject: " + subject.encode() + b"\r\n" + JUNK + b"\r\nbody\r\n"
        )
        assert refused == {}


def _headers_part(dsn: bytes) -> bytes:
    part = dsn.split(b"Content-Type: text/rfc822-headers", 1)[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]


def test_dsns_about_untrusted_mail_are_small_and_rate_limited(gateway_factory, sink):
    sink.rcpt_replies["nobody@example.net"] = ["550 5.1.1 <nobody@example.net>: no such user"] * 100
    # workers = 1: the exact count is one process's; N workers each allow DSN_COUNT / N (rounded up),
    # so their sum stays a bound but fewer may go out when the bounces fall unevenly on them
    gateway = gateway_factory(relay_config(sink.port, "workers = 1\n"))
    with gateway:
        for n in range(DSN_COUNT + 2):
            _send(gateway.port, ATTACKER, f"attempt {n}")
        gateway.wait_for_log(r"backscatter limit", count=2, timeout=60)
        dsns = sink.wait_for_messages(DSN_COUNT, timeout=60)
        assert all(m.rcpt_tos == [VICTIM] and m.mail_from == "" for m in dsns)
        for dsn in dsns:
            headers = _headers_part(dsn.data)
            assert len(headers) <= UNTRUSTED_HEADER_LIMIT and b"Subject: attempt " in headers
            assert len(dsn.data) < 3 * UNTRUSTED_HEADER_LIMIT
        # mail from a trusted client still gets its DSN, with all its headers
        _send(gateway.port, "127.0.0.1", "trusted")
        (trusted,) = [m for m in sink.wait_for_messages(DSN_COUNT + 1, timeout=60) if b"Subject: trusted" in m.data]
        assert len(_headers_part(trusted.data)) > len(JUNK)
    assert len([m for m in sink.messages if m.rcpt_tos == [VICTIM]]) == DSN_COUNT + 1
