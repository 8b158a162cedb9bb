"""Inbound SPF/DKIM/DMARC through the real gateway, with a real DNS server on loopback."""

from __future__ import annotations

import smtplib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.dkim.keys import dns_txt_value
from tests.harness.dns_server import TestDnsServer
from tests.harness.helpers import relay_config

OUTSIDER = "127.0.0.2"  # the untrusted client: its mail to relay_domains takes the inbound pipeline


@pytest.fixture(scope="module")
def sender_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def dns(sender_key):
    records = {
        ("good.example", "TXT"): ["v=spf1 ip4:127.0.0.2 -all"],
        ("_dmarc.good.example", "TXT"): ["v=DMARC1; p=reject"],
        ("sel._domainkey.good.example", "TXT"): [dns_txt_value(sender_key)],
        ("strict.example", "TXT"): ["v=spf1 ip4:192.0.2.1 -all"],
        ("_dmarc.strict.example", "TXT"): ["v=DMARC1; p=reject"],
    }
    with TestDnsServer(records) as server:
        yield server


def gateway_config(sink_port: int, dns_port: int, extra: str = "") -> str:
    return relay_config(sink_port, f'dns_nameservers = ["127.0.0.1:{dns_port}"]\n') + (
        '[pipeline]\ninbound = ["sender_auth"]\n[sender_auth]\n' + extra
    )


def send(port: int, sender: str, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, source_address=(OUTSIDER, 0), timeout=30) as client:
        client.ehlo("mta.good.example")
        assert client.mail(sender)[0] == 250
        assert client.rcpt("user@example.net")[0] == 250
        return client.data(message)


def results_of(data: bytes) -> list[str]:
    """The Authentication-Results fields added by gw.test, unfolded."""
    fields = []
    for block in data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").split(b"\r\n"):
        if block.lower().startswith(b"authentication-results:"):
            fields.append(block.decode())
    return [f for f in fields if f.split(":", 1)[1].strip().startswith("gw.test")]


def test_signed_aligned_mail_passes_and_forged_results_are_removed(gateway_factory, sink, dns, sender_key):
    body = (
        b"Authentication-Results: gw.test; spf=pass smtp.mailfrom=evil.example; dkim=pass\r\n"
        b"Authentication-Results: other.example; spf=fail\r\n"
        b"From: Ann <ann@good.example>\r\nTo: user@example.net\r\nSubject: hi\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a1@good.example>\r\n\r\nHello.\r\n"
    )
    pem = sender_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signed = dkim.sign(body, b"sel", b"good.example", pem, include_headers=[b"from", b"to", b"subject"]) + body
    with gateway_factory(gateway_config(sink.port, dns.port)) as gateway:
        assert send(gateway.port, "ann@good.example", signed)[0] == 250
        (message,) = sink.wait_for_messages(1)
    ours = results_of(message.data)
    assert len(ours) == 1, ours
    assert "spf=pass smtp.mailfrom=good.example" in ours[0]
    assert "dkim=pass header.d=good.example" in ours[0]
    assert "dmarc=pass" in ours[0] and "header.from=good.example" in ours[0]
    assert b"evil.example" not in message.data  # the forged one is gone
    assert b"Authentication-Results: other.example; spf=fail" in message.data  # others are kept


def test_spf_fail_and_dmarc_reject_when_enabled(gateway_factory, sink, dns):
    body = (
        b"From: Boss <boss@strict.example>\r\nTo: user@example.net\r\nSubject: wire money\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@strict.example>\r\n\r\nNow.\r\n"
    )
    with gateway_factory(gateway_config(sink.port, dns.port, "dmarc_reject = true\n")) as gateway:
        code, text = send(gateway.port, "boss@strict.example", body)
        assert code == 550 and text.startswith(b"5.7.1 Message rejected by the DMARC policy of strict.example")
        gateway.wait_for_log(r"result=reject .*reason=dmarc_reject")
    assert sink.messages == []


def test_unsigned_mail_without_records_gets_none(gateway_factory, sink, dns):
    body = b"From: x@unknown.example\r\nSubject: s\r\n\r\nb\r\n"
    with gateway_factory(gateway_config(sink.port, dns.port)) as gateway:
        assert send(gateway.port, "x@unknown.example", body)[0] == 250
        (message,) = sink.wait_for_messages(1)
    (ours,) = results_of(message.data)
    assert "spf=none" in ours and "dkim=none" in ours and "dmarc=none" in ours
