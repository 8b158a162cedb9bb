"""Signals: SIGHUP reloads (or refuses a broken config and keeps serving); SIGTERM loses nothing
and closes idle sessions with 421 4.3.2 at once."""

from __future__ import annotations

import signal
import smtplib

from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink


def send(port: int, recipient: str = "b@elsewhere.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail("a@example.com", [recipient], b"Subject: s\r\n\r\nbody\r\n") == {}


def test_sighup_with_a_broken_config_keeps_serving(gateway_factory, sink):
    gateway = gateway_factory(relay_config(sink.port))
    with gateway:
        good = gateway.config_path.read_text()
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as open_session:
            open_session.ehlo("client.test")
            gateway.config_path.write_text(good + 'maximal_queue_lifetime = "forever"\n')
            gateway.process.send_signal(signal.SIGHUP)
            gateway.wait_for_log(r"reload refused, keeping the running configuration: .*maximal_queue_lifetime")
            # the session opened before the reload goes on, and new ones work
            assert open_session.sendmail("a@example.com", ["b@elsewhere.org"], b"Subject: 1\r\n\r\nx\r\n") == {}
        send(gateway.port, "c@elsewhere.org")
        assert len(sink.wait_for_messages(2)) == 2
        assert gateway.process.poll() is None


def test_sighup_applies_a_new_relayhost_and_certificate(gateway_factory, sink):
    with SmtpSink() as second:
        gateway = gateway_factory(relay_config(sink.port))
        with gateway:
            send(gateway.port, "first@elsewhere.org")
            sink.wait_for_messages(1)
            text = gateway.config_path.read_text().replace(f"[127.0.0.1]:{sink.port}", f"[127.0.0.1]:{second.port}")
            gateway.config_path.write_text(text)
            gateway.process.send_signal(signal.SIGHUP)
            gateway.wait_for_log("reload done")
            send(gateway.port, "second@elsewhere.org")
            (message,) = second.wait_for_messages(1)
            assert message.rcpt_tos == ["second@elsewhere.org"]
            assert len(sink.messages) == 1


def test_sigterm_during_a_transaction_loses_nothing(gateway_factory):
    sink = SmtpSink()  # relayhost down: the message must survive in the spool
    try:
        gateway = gateway_factory(relay_config(sink.port))
        gateway.start()
        client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
        client.ehlo("client.test")
        client.mail("a@example.com")
        client.rcpt("late@elsewhere.org")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        gateway.process.send_signal(signal.SIGTERM)
        gateway.wait_for_log("stop requested")
        client.send(b"second half\r\n.\r\n")
        code, text = client.getreply()
        assert code == 250, text
        client.quit()
        assert gateway.process.wait(30) == 0
        listed = gateway.cli("queue", "list").stdout
        assert "late@elsewhere.org" in listed
        sink.start()
        gateway.start()
        (message,) = sink.wait_for_messages(1)
        assert message.data.endswith(b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n")
    finally:
        sink.stop()


def test_sigterm_closes_idle_sessions_with_421_and_lets_open_transactions_finish(gateway_factory, sink):
    # Shutdown waits up to 30 s (shutdown_timeout) for open transactions, not for idle clients:
    # each session gets 421 4.3.2 as soon as it holds no transaction.
    gateway = gateway_factory(relay_config(sink.port))
    gateway.start()
    idle = [smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) for _ in range(3)]
    for client in idle[1:]:
        client.ehlo("idle.test")  # idle[0] never said anything after the greeting
    busy = smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
    busy.ehlo("busy.test")
    assert busy.mail("a@example.com")[0] == 250
    assert busy.rcpt("b@elsewhere.org")[0] == 250
    gateway.process.send_signal(signal.SIGTERM)
    gateway.wait_for_log("stop requested")
    for client in idle:
        code, text = client.getreply()
        assert (code, text) == (421, b"4.3.2 Service shutting down, closing transmission channel")
    # the open transaction goes on: its message is acknowledged, then the session gets its 421
    code, text = busy.data(b"Subject: finished during shutdown\r\n\r\nbody\r\n")
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), (code, text)
    assert busy.getreply() == (421, b"4.3.2 Service shutting down, closing transmission channel")
    assert gateway.process.wait(20) == 0  # well before shutdown_timeout: nobody held it
    queued = text.decode().rsplit(" ", 1)[1]
    assert (
        any(f"{queued}: removed" in line for line in gateway.lines) or queued in gateway.cli("queue", "list").stdout
    )  # relayed before the stop, or kept in the spool
    for client in [*idle, busy]:
        client.close()


def test_json_log_format(gateway_factory, sink):
    import json

    gateway = gateway_factory(relay_config(sink.port, 'log_format = "json"\nlog_level = "info"\n'))
    with gateway:
        send(gateway.port)
        sink.wait_for_messages(1)
        gateway.wait_for_log(r'"msg": "[0-9A-F]{19}: removed"')
    records = [json.loads(line) for line in gateway.lines if line.startswith("{")]
    assert len(records) >= 5
    assert all({"ts", "level", "logger", "msg"} <= set(record) for record in records)
    assert any(record["logger"] == "gateway.relay" and "status=sent" in record["msg"] for record in records)
    # the multi-line CA certificate is one JSON record, not loose lines
    assert all(line.startswith("{") for line in gateway.lines if line.strip())
