"""The reply to the end of data: read without asyncio.wait_for, bounded by smtp_timeout all the same (issue 17).

The next hop is a small SMTP server on 127.0.0.1 in the test's event loop (a real socket): it
answers every command, then says nothing after the message's final dot, or answers it with 250
or 451. No mock: the client under test is the relay's own ``SmtpClient``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.config import build
from gateway.errors import DeliveryError
from gateway.relay.client import ConnectionCache, SmtpClient
from gateway.relay.routing import TargetHost
from gateway.values import NextHop

MESSAGE = b"Subject: end of data\r\n\r\nbody\r\n"


async def serve(end_of_data_reply: bytes | None) -> asyncio.Server:
    """An SMTP server answering ``end_of_data_reply`` to the final dot (None: never)."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test ESMTP\r\n")
        in_data = False
        for _ in range(100):  # commands of one short session
            line = await reader.readline()
            if not line:
                break
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    if end_of_data_reply is None:
                        await reader.read()  # silent until the client gives up
                        break
                    writer.write(end_of_data_reply)
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-hop.test\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                in_data = True
                writer.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
        writer.close()

    return await asyncio.start_server(session, "127.0.0.1", 0)


async def attempt(end_of_data_reply: bytes | None, smtp_timeout: str) -> tuple[dict[str, str], float]:
    server = await serve(end_of_data_reply)
    port = server.sockets[0].getsockname()[1]
    config = build(
        {"relayhost": [f"[127.0.0.1]:{port}"], "smtp_tls_security_level": "none", "smtp_timeout": smtp_timeout}
    )
    client = SmtpClient(config, None, ConnectionCache(config.smtp_connection_cache_time_limit))
    host = TargetHost("127.0.0.1", "127.0.0.1", port, NextHop("127.0.0.1", port, False))
    started = time.monotonic()
    try:
        result = await client.deliver(
            host, "a@example.org", ["b@example.net"], MESSAGE, smtputf8=False, body_8bitmime=False
        )
        return {address: str(reply) for address, reply in result.replies.items()}, time.monotonic() - started
    finally:
        await client.cache.close()
        server.close()


def test_the_250_to_the_end_of_data_is_the_recipients_reply() -> None:
    replies, _ = asyncio.run(attempt(b"250 2.0.0 queued as X\r\n", "30s"))
    assert replies["b@example.net"].startswith("250 2.0.0 queued as X")
    replies, _ = asyncio.run(attempt(b"451 4.3.0 not now\r\n", "30s"))
    assert replies["b@example.net"].startswith("451 4.3.0 not now")


def test_silence_after_the_end_of_data_ends_the_attempt_after_smtp_timeout() -> None:
    with pytest.raises(DeliveryError) as raised:
        asyncio.run(attempt(None, "1s"))
    reply = raised.value.reply
    assert reply.code == 451 and reply.status == "4.4.2", reply
    assert "no reply to the end of data in 1s" in reply.text, reply
