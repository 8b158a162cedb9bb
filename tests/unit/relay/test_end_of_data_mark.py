"""The next hop's 2xx to the end of data is acted on in the transport's own callback (issue 17).

``SmtpClient.deliver(on_accepted=...)`` must call ``on_accepted`` from the
transport's data callback, where no task runs (``asyncio.current_task()`` is
None), before the task awaiting the reply resumes: that is what lets the relay
worker mark a recipient done one turn of the event loop earlier than the
awaiting task could. Shown against a real SMTP server (the test sink, aiosmtpd,
in its own thread) over 127.0.0.1, on both event loops the gateway runs
(``event_loop`` uvloop and asyncio), in clear text and after STARTTLS (the
transport under aiosmtplib is then a TLS transport, whose protocol is swapped
the same way). If aiosmtplib stopped exposing its response future, the
callback would come from the task instead, and these tests fail.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trustme
import uvloop

from gateway.config import build
from gateway.relay.client import AttemptResult, ConnectionCache, SmtpClient
from gateway.relay.routing import TargetHost
from gateway.values import NextHop
from tests.harness.smtp_sink import SmtpSink

MESSAGE = b"Subject: marks\r\n\r\nbody\r\n"

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(scope="module")
def sink_context() -> ssl.SSLContext:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sink.test", "127.0.0.1").configure_cert(context)
    return context


def client_for(port: int, tls: bool) -> SmtpClient:
    config = build(
        {
            "relayhost": [f"[127.0.0.1]:{port}"],
            "smtp_tls_security_level": "encrypt" if tls else "none",
            "smtp_timeout": "10s",
        }
    )
    context = None
    if tls:  # smtp_tls_security_level = encrypt: encrypted, not verified
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return SmtpClient(config, context, ConnectionCache(config.smtp_connection_cache_time_limit))


async def deliver_and_watch(port: int, tls: bool, recipients: list[str]) -> tuple[AttemptResult, list[dict[str, Any]]]:
    """Deliver once; returns the result and what each ``on_accepted`` call saw when it ran."""
    client = client_for(port, tls)
    host = TargetHost("127.0.0.1", "127.0.0.1", port, NextHop("127.0.0.1", port, False))
    returned = False
    calls: list[dict[str, Any]] = []

    def on_accepted(accepted: list[str], dsn_passed: bool) -> None:
        calls.append(
            {
                "accepted": list(accepted),
                "dsn_passed": dsn_passed,
                "task": asyncio.current_task(),
                "deliver_returned": returned,
            }
        )

    try:
        result = await client.deliver(
            host, "a@example.org", recipients, MESSAGE, smtputf8=False, body_8bitmime=False, on_accepted=on_accepted
        )
        returned = True
        return result, calls
    finally:
        await client.cache.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_2xx_to_the_end_of_data_calls_on_accepted_from_the_transport(loop, tls, sink_context) -> None:
    with SmtpSink(tls_context=sink_context if tls else None) as sink:
        sink.rcpt_replies["refused@example.net"] = ["550 5.1.1 no such user"]
        recipients = ["one@example.net", "refused@example.net", "two@example.net"]
        result, calls = LOOPS[loop](deliver_and_watch(sink.port, tls, recipients))
        assert [m.rcpt_tos for m in sink.messages] == [["one@example.net", "two@example.net"]]
        if tls:
            assert sink.messages[0].tls, "the message did not go over TLS"
    assert str(result.replies["one@example.net"]).startswith("250"), result.replies
    assert str(result.replies["refused@example.net"]).startswith("550 5.1.1"), result.replies
    assert len(calls) == 1, calls
    (call,) = calls
    # what the 250 delivers: the recipients the server had accepted, not the one refused at RCPT
    assert call["accepted"] == ["one@example.net", "two@example.net"]
    assert call["dsn_passed"] is False
    assert call["task"] is None, "on_accepted ran in a task, not in the transport's callback"
    assert call["deliver_returned"] is False


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("reply", ["451 4.3.0 not now", "554 5.7.1 refused"])
def test_a_refused_end_of_data_calls_nothing(loop, reply) -> None:
    with SmtpSink() as sink:
        sink.data_replies.append(reply)
        result, calls = LOOPS[loop](deliver_and_watch(sink.port, False, ["one@example.net"]))
    assert str(result.replies["one@example.net"]).startswith(reply), result.replies
    assert calls == []


def test_a_cached_connection_is_watched_again_for_its_next_message() -> None:
    """The protocol swapped for one reply is put back: the next transaction on the same connection (the
    connection cache) is read and watched as the first was."""

    async def twice(port: int) -> list[list[str]]:
        client = client_for(port, False)
        host = TargetHost("127.0.0.1", "127.0.0.1", port, NextHop("127.0.0.1", port, False))
        seen: list[list[str]] = []
        try:
            for address in ("first@example.net", "second@example.net"):
                result = await client.deliver(
                    host,
                    "a@example.org",
                    [address],
                    MESSAGE,
                    smtputf8=False,
                    body_8bitmime=False,
                    on_accepted=lambda accepted, _dsn: seen.append(list(accepted)),
                )
                assert str(result.replies[address]).startswith("250"), result.replies
        finally:
            await client.cache.close()
        return seen

    with SmtpSink() as sink:
        seen = uvloop.run(twice(sink.port))
        sessions = {m.peer for m in sink.messages}
    assert seen == [["first@example.net"], ["second@example.net"]]
    assert len(sessions) == 1, f"the second message did not reuse the connection: {sessions}"
