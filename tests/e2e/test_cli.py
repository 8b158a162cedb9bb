"""The command line: check-config errors name the key; queue commands work next to a running gateway."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys

import pytest

from tests.conftest import relay_config
from tests.harness.smtp_sink import SmtpSink


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          env=environ, timeout=60)


@pytest.mark.parametrize("config, key, value", [
    ('maximal_queue_lifetime = "5 days"\n', "maximal_queue_lifetime", "5 days"),
    ('relayhost = ["[10.0.0.1]:99999"]\n', "relayhost", "[10.0.0.1]:99999"),
    ('mynetworks = ["10.0.0.300/8"]\n', "mynetworks", "10.0.0.300/8"),
    ('smtp_tls_security_level = "sometimes"\n', "smtp_tls_security_level", "sometimes"),
    ('relay_clientcerts = ["AB:CD"]\n', "relay_clientcerts", "AB:CD"),
    ('mydestination = "x"\n', "mydestination", "x"),
    ('[[listener]]\naddress = "127.0.0.1:25"\ntls = "maybe"\n', "listener[0].tls", "maybe"),
])
def test_check_config_names_the_bad_key(tmp_path, config, key, value):
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 2
    assert f"config key '{key}'" in result.stderr and value in result.stderr, result.stderr


def test_check_config_env_override_error_names_the_key(tmp_path):
    result = run_cli("check-config", env={"GATEWAY_MINIMAL_BACKOFF_TIME": "soon"})
    assert result.returncode == 2 and "'minimal_backoff_time'" in result.stderr and "soon" in result.stderr


def test_check_config_prints_the_effective_config(tmp_path):
    result = run_cli("check-config", env={"GATEWAY_RELAYHOST": "[127.0.0.1]:2526, relay.example:587"})
    assert result.returncode == 0, result.stderr
    assert "relayhost = [127.0.0.1]:2526, relay.example:587" in result.stdout
    assert "listener = smtp 127.0.0.1:2525 tls=starttls" in result.stdout
    assert "maximal_queue_lifetime = 432000.0" in result.stdout


def test_queue_commands_next_to_a_running_gateway(gateway_factory):
    sink = SmtpSink()  # relayhost down: mail stays deferred
    try:
        gateway = gateway_factory(relay_config(sink.port, minimal_backoff_time='"1h"',
                                                maximal_backoff_time='"2h"'))
        with gateway:
            with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
                client.sendmail("alice@example.com", ["bob@elsewhere.org"], b"Subject: q1\r\n\r\none\r\n")
                client.sendmail("carol@example.com", ["dan@elsewhere.org"], b"Subject: q2\r\n\r\ntwo\r\n")
            gateway.wait_for_log(r"deferred, 1 recipient\(s\) left", count=2)
            rows = [json.loads(line) for line in gateway.cli("queue", "list", "--json").stdout.splitlines()]
            assert {row["state"] for row in rows} == {"deferred"} and len(rows) == 2
            first, second = sorted(rows, key=lambda r: r["sender"])
            assert first["sender"] == "alice@example.com" and first["recipients"] == ["bob@elsewhere.org"]
            assert "4.4.1" in first["last_error"] and first["next_attempt"] > first["arrival"]
            text = gateway.cli("queue", "list").stdout
            assert first["queue_id"] in text and "bob@elsewhere.org" in text and "Requests" in text
            shown = gateway.cli("queue", "show", first["queue_id"]).stdout
            assert "state: deferred" in shown and "Subject: q1" in shown

            assert gateway.cli("queue", "hold", first["queue_id"]).returncode == 0
            assert {r["queue_id"]: r["state"] for r in map(json.loads, gateway.cli(
                "queue", "list", "--json").stdout.splitlines())}[first["queue_id"]] == "hold"
            assert gateway.cli("queue", "delete", second["queue_id"]).returncode == 0
            missing = gateway.cli("queue", "show", second["queue_id"], check=False)
            assert missing.returncode == 1 and "no such message" in missing.stderr

            sink.start()  # the relayhost is back: flush does nothing for held mail, release delivers
            assert gateway.cli("queue", "flush").stdout.strip() == "flushed 0 message(s)"
            assert gateway.cli("queue", "release", first["queue_id"]).returncode == 0
            (message,) = sink.wait_for_messages(1)
            assert message.rcpt_tos == ["bob@elsewhere.org"]
            gateway.wait_for_log(rf"{first['queue_id']}: removed")
            assert gateway.cli("queue", "list").stdout.strip() == "Mail queue is empty"
    finally:
        sink.stop()


def test_flush_retries_deferred_mail_now(gateway_factory):
    sink = SmtpSink()
    try:
        gateway = gateway_factory(relay_config(sink.port, minimal_backoff_time='"1h"',
                                                maximal_backoff_time='"2h"'))
        with gateway:
            with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
                client.sendmail("alice@example.com", ["bob@elsewhere.org"], b"Subject: f\r\n\r\nx\r\n")
            gateway.wait_for_log(r"deferred, 1 recipient\(s\) left")
            sink.start()
            assert gateway.cli("queue", "flush").stdout.strip() == "flushed 1 message(s)"
            (message,) = sink.wait_for_messages(1)
            assert message.rcpt_tos == ["bob@elsewhere.org"]
    finally:
        sink.stop()


def test_bad_queue_id_is_a_clear_error(gateway_factory):
    gateway = gateway_factory("")
    result = gateway.cli("queue", "hold", "../../etc/passwd", check=False)
    assert result.returncode == 1 and "is not a queue ID" in result.stderr


@pytest.mark.parametrize("config, key", [
    ('[pipeline]\ninbound = ["antivirus", "nonsense"]\n', "pipeline.inbound"),
    ('[pipeline]\ninbound = ["antivirus"]\n[antivirus]\nclamd = "carrier-pigeon"\n', "antivirus.clamd"),
    ('[spam_levels]\ntag_level = 9.0\ntag2_level = 3.0\n[pipeline]\ninbound = ["spamassassin"]\n',
     "spam_levels.tag_level"),
    ('[dkim]\ndomains = ["example.com"]\nalgorithms = ["rsa-sha1"]\n', "dkim.algorithms"),
])
def test_check_config_validates_policy_tables(tmp_path, config, key):
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 2 and f"config key '{key}'" in result.stderr, result.stderr


def test_check_config_generates_no_keys(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(f'state_dir = "{tmp_path / "var"}"\n[dkim]\ndomains = ["example.com"]\n')
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var" / "dkim").exists()
