"""Recipient address verification (``reject_unverified_recipient``) against a real mailbox-side SMTP server.

The mailbox server is a real SMTP sink on loopback, reached through
``transport_maps`` as an inbound MX reaches its mailbox host; it refuses unknown
users with 550 and can be told to tempfail. Shown: an unknown recipient refused
``550 5.1.1`` after one probe, the second try answered from the cache (no new
probe), a tempfailing probe giving ``450 4.1.1`` (and not cached), and the cache
surviving a restart of the gateway. The probe never sends a message: the
mailbox server records no DATA.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink

OUTSIDER = "127.0.0.3"


@pytest.fixture
def mailbox_server():
    with SmtpSink() as server:
        server.rcpt_replies = {
            "nobody@example.net": ["550 5.1.1 <nobody@example.net>: user unknown"] * 5,
            "later@example.net": ["450 4.2.0 mailbox busy"] * 5,
        }
        yield server


def config(relay_port: int, mailbox_port: int) -> str:
    return relay_config(
        relay_port,
        'reject_unverified_recipient = true\naddress_verify_timeout = "10s"\n',
        relay_domains='["example.net"]',
        transport_maps=f'{{ "example.net" = "[127.0.0.1]:{mailbox_port}" }}',
    )


def rcpt(gateway, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=30) as client:
        client.ehlo("mx.sender.test")
        assert client.docmd("MAIL", "FROM:<someone@sender.test>")[0] == 250
        return client.docmd("RCPT", f"TO:<{address}>")


def test_unknown_refused_after_one_probe_then_from_the_cache_even_after_a_restart(
    gateway_factory, sink, mailbox_server
):
    gateway = gateway_factory(config(sink.port, mailbox_server.port))
    with gateway:
        code, text = rcpt(gateway, "nobody@example.net")
        assert code == 550 and text.startswith(
            b"5.1.1 <nobody@example.net>: Recipient address rejected: "
            b"undeliverable address: 550 5.1.1 <nobody@example.net>: user unknown"
        )
        assert rcpt(gateway, "alice@example.net")[0] == 250
        assert mailbox_server.attempts == {"nobody@example.net": 1, "alice@example.net": 1}
        assert rcpt(gateway, "nobody@example.net")[0] == 550  # from the cache: no second probe
        assert rcpt(gateway, "ALICE@example.net")[0] == 250
        assert mailbox_server.attempts == {"nobody@example.net": 1, "alice@example.net": 1}
        gateway.wait_for_log(r"recipients: nobody@example\.net undeliverable \(address verification cache")
    with gateway:  # a restart: the cache is on disk
        assert rcpt(gateway, "nobody@example.net")[0] == 550
        assert rcpt(gateway, "alice@example.net")[0] == 250
    assert mailbox_server.attempts == {"nobody@example.net": 1, "alice@example.net": 1}
    assert mailbox_server.data_attempts == {}  # probes stop at RCPT


def test_a_probe_that_tempfails_gives_450_and_is_asked_again(gateway_factory, sink, mailbox_server):
    with gateway_factory(config(sink.port, mailbox_server.port)) as gateway:
        for _ in range(2):
            code, text = rcpt(gateway, "later@example.net")
            assert code == 450 and text.startswith(
                b"4.1.1 <later@example.net>: Recipient address rejected: unverified address: 450 4.2.0 mailbox busy"
            )
        assert mailbox_server.attempts["later@example.net"] == 2  # a temporary answer is not remembered
        # mail for a verified recipient is delivered to the mailbox server as usual
        with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=30) as client:
            assert client.sendmail("someone@sender.test", ["alice@example.net"], b"Subject: v\r\n\r\nx\r\n") == {}
        (message,) = mailbox_server.wait_for_messages(1)
        assert message.rcpt_tos == ["alice@example.net"]


def test_check_config_and_explain_keep_no_cache(gateway_factory, sink, mailbox_server):
    gateway = gateway_factory(config(sink.port, mailbox_server.port))  # not started: the CLI only
    assert gateway.cli("check-config").returncode == 0
    done = gateway.cli(
        "explain", "--client", OUTSIDER, "--from", "someone@sender.test", "--to", "nobody@example.net", check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "RCPT TO:<nobody@example.net>: 550 5.1.1 <nobody@example.net>: Recipient address rejected: "
        "undeliverable address: 550 5.1.1"
    ) in done.stdout
    assert mailbox_server.attempts == {"nobody@example.net": 1}  # explain asked the mailbox server ...
    assert not (gateway.state_dir / "address_verify.sqlite").exists()  # ... and kept nothing


def test_a_utf8_recipient_is_probed_with_smtputf8(gateway_factory, sink, mailbox_server):
    with gateway_factory(config(sink.port, mailbox_server.port)) as gateway:
        with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=30) as client:
            client.ehlo("mx.sender.test")
            assert client.docmd("MAIL", "FROM:<someone@sender.test> SMTPUTF8")[0] == 250
            client.send("RCPT TO:<δοκιμή@example.net>\r\n".encode())
            assert client.getreply()[0] == 250
    assert mailbox_server.attempts == {"δοκιμή@example.net": 1}
