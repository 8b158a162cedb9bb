"""``event_loop``: uvloop by default, asyncio's own loop as the fallback; both relay mail over STARTTLS."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.harness.helpers import relay_config


@pytest.mark.parametrize("event_loop", [None, "asyncio"])
def test_both_event_loops_relay_over_starttls(gateway_factory, sink, event_loop):
    extra = "" if event_loop is None else f'event_loop = "{event_loop}"\n'
    with gateway_factory(relay_config(sink.port) + extra) as gateway:
        gateway.wait_for_log(rf"event loop: {event_loop or 'uvloop'}$")
        context = ssl.create_default_context(cafile=str(gateway.ca_file))
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
            client.starttls(context=context)
            client.sendmail("a@example.com", ["b@elsewhere.org"], b"Subject: loop\r\n\r\nover TLS\r\n")
        (message,) = sink.wait_for_messages(1)
        assert message.data.endswith(b"over TLS\r\n")
