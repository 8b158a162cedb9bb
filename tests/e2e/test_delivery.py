"""The relay worker against real SMTP sinks: failover, retries, bounces, partial delivery, crashes."""

from __future__ import annotations

import email
import email.policy
import smtplib

from tests.harness.helpers import relay_config
from tests.harness.ports import free_port
from tests.harness.smtp_sink import SmtpSink


def submit(port: int, sender: str, recipients: list[str], body: bytes = b"Subject: t\r\n\r\nbody\r\n") -> str:
    """Send over plain SMTP from 127.0.0.1 (trusted); returns the queue ID from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, text = client.data(body)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), (code, text)
    return text.rsplit(b" ", 1)[1].decode()


def parse_dsn(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    return message


def delivery_status(dsn: email.message.EmailMessage) -> str:
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return (
        b"".join(bytes(sub) for sub in part.get_payload()).decode()
        if part.is_multipart()
        else part.get_payload(decode=True).decode()
    )


def test_relayhost_failover_to_second_host(gateway_factory, sink):
    dead_port = free_port()  # nothing listens here
    gateway = gateway_factory(
        relay_config(sink.port, relayhost=f'["[127.0.0.1]:{dead_port}", "[127.0.0.1]:{sink.port}"]')
    )
    with gateway:
        queue_id = submit(gateway.port, "a@example.com", ["b@elsewhere.org"])
        (message,) = sink.wait_for_messages(1)
        assert message.rcpt_tos == ["b@elsewhere.org"]
        gateway.wait_for_log(rf"{queue_id}: host 127\.0\.0\.1\[127\.0\.0\.1\]:{dead_port} refused to talk")
        gateway.wait_for_log(
            rf"{queue_id}: to=<b@elsewhere\.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}"
            r".*status=sent"
        )


def test_4xx_then_success_delivers_exactly_once(gateway_factory, sink):
    sink.rcpt_replies["b@elsewhere.org"] = ["451 4.3.0 try again later"]
    with gateway_factory(relay_config(sink.port)) as gateway:
        queue_id = submit(gateway.port, "a@example.com", ["b@elsewhere.org"])
        gateway.wait_for_log(rf"{queue_id}: to=<b@elsewhere\.org>.*status=deferred \(451 4\.3\.0 try again later\)")
        gateway.wait_for_log(rf"{queue_id}: to=<b@elsewhere\.org>.*attempts=2, status=sent")
        gateway.wait_for_log(rf"{queue_id}: removed")
    assert sink.attempts["b@elsewhere.org"] == 2
    assert sink.delivered["b@elsewhere.org"] == 1
    assert len(sink.messages) == 1


def test_5xx_bounces_with_a_dsn_to_the_sender(gateway_factory, sink):
    sink.rcpt_replies["nobody@elsewhere.org"] = ["550 5.1.1 No such user"]
    with gateway_factory(relay_config(sink.port)) as gateway:
        queue_id = submit(
            gateway.port,
            "alice@example.com",
            ["nobody@elsewhere.org", "ok@elsewhere.org"],
            b"Subject: will bounce\r\nMessage-ID: <m1@example.com>\r\n\r\nsecret body\r\n",
        )
        messages = sink.wait_for_messages(2)
        gateway.wait_for_log(rf"{queue_id}: sender non-delivery notification")
    delivered = [m for m in messages if m.mail_from == "alice@example.com"]
    assert [m.rcpt_tos for m in delivered] == [["ok@elsewhere.org"]]
    (bounce,) = [m for m in messages if m.mail_from == ""]
    assert bounce.rcpt_tos == ["alice@example.com"]
    dsn = parse_dsn(bounce.data)
    status = delivery_status(dsn)
    assert "Final-Recipient: rfc822; nobody@elsewhere.org" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "550 5.1.1 No such user" in status
    assert "ok@elsewhere.org" not in status
    assert b"Subject: will bounce" in bounce.data and b"secret body" not in bounce.data


def test_null_sender_never_gets_a_bounce(gateway_factory, sink):
    sink.rcpt_replies["nobody@elsewhere.org"] = ["550 5.1.1 No such user"]
    with gateway_factory(relay_config(sink.port)) as gateway:
        queue_id = submit(gateway.port, "<>", ["nobody@elsewhere.org"])
        gateway.wait_for_log(rf"{queue_id}: no DSN for nobody@elsewhere\.org")
        gateway.wait_for_log(rf"{queue_id}: removed")
    assert sink.messages == []


def test_queue_lifetime_expiry_bounces_with_a_dsn(gateway_factory, sink):
    sink.rcpt_replies["slow@elsewhere.org"] = ["451 4.2.0 mailbox busy"] * 50
    config = relay_config(sink.port, 'maximal_queue_lifetime = "2s"\n')
    with gateway_factory(config) as gateway:
        queue_id = submit(gateway.port, "alice@example.com", ["slow@elsewhere.org"])
        gateway.wait_for_log(rf"{queue_id}: to=<slow@elsewhere\.org>, status=expired", timeout=20)
        (bounce,) = sink.wait_for_messages(1, timeout=15)
    assert bounce.mail_from == "" and bounce.rcpt_tos == ["alice@example.com"]
    status = delivery_status(parse_dsn(bounce.data))
    assert "Final-Recipient: rfc822; slow@elsewhere.org" in status
    assert "Action: failed" in status and "451 4.2.0 mailbox busy" in status
    assert sink.attempts["slow@elsewhere.org"] >= 2


def test_partial_delivery_sends_nothing_twice(gateway_factory, sink):
    sink.rcpt_replies["second@elsewhere.org"] = ["452 4.2.2 mailbox full", "452 4.2.2 mailbox full"]
    with gateway_factory(relay_config(sink.port)) as gateway:
        queue_id = submit(
            gateway.port, "a@example.com", ["first@elsewhere.org", "second@elsewhere.org", "third@elsewhere.org"]
        )
        gateway.wait_for_log(rf"{queue_id}: to=<second@elsewhere\.org>.*attempts=3, status=sent", timeout=20)
        gateway.wait_for_log(rf"{queue_id}: removed")
    assert sink.delivered == {"first@elsewhere.org": 1, "second@elsewhere.org": 1, "third@elsewhere.org": 1}
    assert sink.attempts["first@elsewhere.org"] == 1 and sink.attempts["third@elsewhere.org"] == 1
    assert [m.rcpt_tos for m in sink.messages] == [
        ["first@elsewhere.org", "third@elsewhere.org"],
        ["second@elsewhere.org"],
    ]


def test_sigkill_right_after_250_then_restart_delivers(gateway_factory):
    sink = SmtpSink()  # bound but not started: the relayhost is down while the gateway dies
    try:
        gateway = gateway_factory(relay_config(sink.port))
        gateway.start()
        queue_ids = [submit(gateway.port, "a@example.com", [f"r{i}@elsewhere.org"]) for i in range(3)]
        gateway.kill()
        assert gateway.process.returncode == -9
        listed = gateway.cli("queue", "list").stdout
        assert all(queue_id in listed for queue_id in queue_ids), listed
        sink.start()
        gateway.start()
        messages = sink.wait_for_messages(3, timeout=20)
        assert sorted(m.rcpt_tos[0] for m in messages) == ["r0@elsewhere.org", "r1@elsewhere.org", "r2@elsewhere.org"]
        for queue_id in queue_ids:
            gateway.wait_for_log(rf"{queue_id}: removed")
        assert gateway.cli("queue", "list").stdout.strip() == "Mail queue is empty"
    finally:
        sink.stop()


def test_routing_to_mx_via_dns(gateway_factory, sink):
    """Direct MX delivery: the loopback test DNS names the sink as the domain's MX."""
    from tests.harness.dns_server import TestDnsServer

    records = {
        ("mx-domain.test", "MX"): ["10 mx1.mx-domain.test.", "20 mx2.mx-domain.test."],
        ("mx1.mx-domain.test", "A"): ["127.0.0.9"],  # nothing listens there
        ("mx2.mx-domain.test", "A"): ["127.0.0.1"],
    }
    with TestDnsServer(records) as dns_server:
        config = relay_config(sink.port, relayhost="[]")
        config += f'dns_nameservers = ["127.0.0.1:{dns_server.port}"]\nsmtp_default_port = {sink.port}\n'
        config += 'smtp_connect_timeout = "2s"\n'
        with gateway_factory(config) as gateway:
            queue_id = submit(gateway.port, "a@example.com", ["user@mx-domain.test"])
            (message,) = sink.wait_for_messages(1)
            gateway.wait_for_log(
                rf"{queue_id}: to=<user@mx-domain\.test>, relay=mx2\.mx-domain\.test"
                rf"\[127\.0\.0\.1\]:{sink.port}.*status=sent"
            )
    assert message.rcpt_tos == ["user@mx-domain.test"]


def test_smtputf8_addresses_relay_with_smtputf8(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port)) as gateway:
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.has_extn("smtputf8")
            body = "Subject: héllo\r\nFrom: José <josé@exämple.com>\r\n\r\nünïcode body\r\n".encode()
            refused = client.sendmail(
                "josé@exämple.com", ["zoë@elsewhere.org"], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
            )
            assert refused == {}
        (message,) = sink.wait_for_messages(1)
    assert message.mail_from == "josé@exämple.com" and message.rcpt_tos == ["zoë@elsewhere.org"]
    assert "SMTPUTF8" in message.mail_options and "BODY=8BITMIME" in message.mail_options
    assert b"with UTF8SMTP id" in message.data
    assert message.data.endswith(body)


def test_a_dsn_lives_at_most_bounce_queue_lifetime_and_is_never_bounced(gateway_factory, sink):
    sink.rcpt_replies["nobody@elsewhere.org"] = ["550 5.1.1 No such user"]
    sink.rcpt_replies["alice@example.com"] = ["451 4.2.0 sender's mailbox busy"] * 50
    config = relay_config(sink.port, 'bounce_queue_lifetime = "2s"\n')
    with gateway_factory(config) as gateway:
        queue_id = submit(gateway.port, "alice@example.com", ["nobody@elsewhere.org"])
        line = gateway.wait_for_log(rf"{queue_id}: sender non-delivery notification: ")[0]
        dsn_id = line.rsplit(" ", 1)[1]
        gateway.wait_for_log(rf"{dsn_id}: to=<alice@example\.com>, status=expired", timeout=20)
        gateway.wait_for_log(rf"{dsn_id}: no DSN for alice@example\.com")
        gateway.wait_for_log(rf"{dsn_id}: removed")
    assert sink.messages == []
    assert sink.attempts["alice@example.com"] >= 2


def test_a_large_message_is_relayed_byte_for_byte_in_pieces(gateway_factory, sink):
    # About 6 MB: the relay writes it in many DATA pieces under flow control (gateway/relay/client.py).
    lines = [b"Subject: large\r\n", b"\r\n"]
    lines += [
        b"." + (b"%07d " % n) * 9 + b"\r\n" if n % 7 == 0 else (b"%07d " % n) * 9 + b"\r\n" for n in range(80_000)
    ]
    body = b"".join(lines)
    with gateway_factory(relay_config(sink.port, message_size_limit='"20M"')) as gateway:
        queue_id = submit(gateway.port, "a@example.com", ["big@elsewhere.org"], body)
        [message] = sink.wait_for_messages(1, 30)
        gateway.wait_for_log(rf"{queue_id}: to=<big@elsewhere\.org>.*status=sent")
    assert message.data.endswith(body)  # dot-stuffing undone by the sink: exactly what was sent
    assert message.data.count(b"\r\n.") == body.count(b"\r\n.")
    assert len(body) > 5_000_000
