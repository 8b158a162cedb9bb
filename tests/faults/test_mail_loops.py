"""Mail loops end: ``hopcount_limit`` counts Received: fields at DATA, as Postfix's cleanup does.

Issue 18: a message with 120 Received: headers was relayed, and a gateway
relaying to itself passed one message round 49 times a second with no end.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.harness.helpers import relay_config
from tests.harness.ports import free_port


def _message(hops: int) -> bytes:
    trace = b"".join(
        b"Received: from hop%d.example by hop%d.example; Fri, 4 Dec 2026 10:00:00 +0000\r\n" % (i, i)
        for i in range(hops)
    )
    return trace + b"From: a@example.com\r\nSubject: hops\r\n\r\nbody\r\n"


@pytest.mark.parametrize("hops, accepted", [(48, True), (49, False), (51, False), (120, False)])
def test_received_fields_beyond_the_limit_get_554_5_4_6(gateway_factory, sink, hops, accepted):
    gateway = gateway_factory(relay_config(sink.port))
    with gateway, smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        client.rcpt("b@elsewhere.org")
        code, text = client.data(_message(hops))
        if accepted:
            assert code == 250, text
            (message,) = sink.wait_for_messages(1)
            assert message.data.count(b"\r\nReceived: ") + message.data.startswith(b"Received: ") == hops + 1
        else:
            assert (code, text) == (554, b"5.4.6 Too many hops")
            gateway.wait_for_log(
                rf"result=reject \(554 5\.4\.6 Too many hops\) reason=hopcount "
                rf"detail={hops + 1} Received fields with ours, limit 50"
            )
            assert client.noop()[0] == 250  # the session goes on
    assert accepted or sink.messages == []


def test_a_gateway_relaying_to_itself_stops_the_loop(gateway_factory):
    port = free_port()
    # relayhost is the gateway itself: every delivery comes back in as a new message
    gateway = gateway_factory(
        relay_config(0, relayhost=f'["[127.0.0.1]:{port}"]', smtp_tls_security_level='"none"'), port=port
    )
    with gateway:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.com", ["b@elsewhere.org"], b"Subject: loop\r\n\r\nround and round\r\n")
        # the message stops at the limit, and so does the DSN to a@example.com; no DSN about a DSN
        gateway.wait_for_log(r"reason=hopcount", count=2, timeout=60)
        gateway.wait_for_log(r"no DSN for ", timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = gateway.cli("queue", "list", "--json").stdout.split("\n")
            if not [line for line in listed if line.strip()]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the queue never drained: {listed}")
        accepted = [line for line in gateway.lines if "result=queued" in line]
        assert 2 * 48 <= len(accepted) <= 2 * 49, len(accepted)  # one round trip per hop, twice
        time.sleep(1)
        assert len([line for line in gateway.lines if "result=queued" in line]) == len(accepted)  # it stopped
