"""Who may relay: mynetworks, relay_domains + transport_maps, address tricks (real sockets)."""

from __future__ import annotations

import smtplib

import pytest

from tests.harness.helpers import client_tls, relay_config
from tests.harness.smtp_sink import SmtpSink

TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.2"  # also loopback, but outside mynetworks = 127.0.0.1/32


def send(
    port: int, source: str, sender: str, recipients: list[str], body: bytes, ca_file=None
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        if ca_file is not None:
            client.starttls(context=client_tls(ca_file))
        return client.sendmail(sender, recipients, body)


@pytest.fixture
def gateway(gateway_factory, sink):
    with SmtpSink() as mailbox_server:
        gw = gateway_factory(
            relay_config(sink.port, f'transport_maps = {{ "example.net" = "[127.0.0.1]:{mailbox_server.port}" }}\n')
        )
        gw.mailbox_server = mailbox_server
        with gw:
            yield gw


def test_trusted_network_relays_with_received_header(gateway, sink):
    refused = send(
        gateway.port,
        TRUSTED,
        "alice@example.com",
        ["bob@elsewhere.org"],
        b"Subject: relay\r\n\r\nbody\r\n",
        ca_file=gateway.ca_file,
    )
    assert refused == {}
    (message,) = sink.wait_for_messages(1)
    assert message.mail_from == "alice@example.com"
    assert message.rcpt_tos == ["bob@elsewhere.org"]
    first_line = message.data.split(b"\r\n", 1)[0]
    assert first_line.startswith(b"Received: from ")
    assert b"by gw.test (gateway) with ESMTPS id " in message.data
    assert message.data.endswith(b"Subject: relay\r\n\r\nbody\r\n")
    gateway.wait_for_log(r"to=<bob@elsewhere.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent")
    # the rule that let it relay, as written in the config (mynetworks = ["127.0.0.1/32"])
    gateway.wait_for_log(
        r"to=<bob@elsewhere\.org>, size=\d+, relay=permitted rule=mynetworks 127\.0\.0\.1/32, "
        r"result=queued"
    )


def test_untrusted_client_is_refused_554_5_7_1(gateway, sink):
    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(UNTRUSTED, 0), timeout=10) as client:
        client.ehlo("outsider.test")
        assert client.mail("spammer@example.com")[0] == 250
        code, text = client.rcpt("victim@elsewhere.org")
        assert (code, text) == (554, b"5.7.1 <victim@elsewhere.org>: Relay access denied")
        assert client.docmd("DATA")[0] == 503  # no accepted recipient
    gateway.wait_for_log(r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.2\]:\d+: 554 5\.7\.1 .*helo=<outsider\.test>")
    assert sink.messages == []


def test_relay_domains_accepted_from_anyone_and_routed_by_transport_maps(gateway, sink):
    refused = send(
        gateway.port, UNTRUSTED, "someone@internet.example", ["user@example.net"], b"Subject: inbound\r\n\r\nhello\r\n"
    )
    assert refused == {}
    (message,) = gateway.mailbox_server.wait_for_messages(1)
    assert message.rcpt_tos == ["user@example.net"]
    assert message.data.endswith(b"Subject: inbound\r\n\r\nhello\r\n")
    assert sink.messages == []  # not via the relayhost


@pytest.mark.parametrize(
    "recipient",
    [
        "user%elsewhere.org@example.net",  # percent hack
        "elsewhere.org!user@example.net",  # bang path
        '"user@elsewhere.org"@example.net',  # quoted local part with @
        "user@elsewhere.org",  # plain foreign domain
        "user@sub.example.net",  # a subdomain is not listed
    ],
)
def test_address_tricks_never_open_the_relay(gateway, recipient):
    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(UNTRUSTED, 0), timeout=10) as client:
        client.ehlo("outsider.test")
        client.mail("a@example.com")
        code, text = client.rcpt(recipient)
    assert code == 554 and text.startswith(b"5.7.1 "), (recipient, code, text)


def test_source_route_is_judged_by_its_final_domain(gateway):
    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(UNTRUSTED, 0), timeout=10) as client:
        client.ehlo("outsider.test")
        client.mail("a@example.com")
        assert client.docmd("RCPT TO:<@example.net:user@elsewhere.org>")[0] == 554
        assert client.docmd("RCPT TO:<@elsewhere.org:user@example.net>")[0] == 250
