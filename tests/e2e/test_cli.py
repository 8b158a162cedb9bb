"""The command line: check-config errors name the key; queue commands work next to a running gateway."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys

import pytest

from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=environ, timeout=60
    )


@pytest.mark.parametrize(
    "config, key, value",
    [
        ('maximal_queue_lifetime = "5 days"\n', "maximal_queue_lifetime", "5 days"),
        ('relayhost = ["[10.0.0.1]:99999"]\n', "relayhost", "[10.0.0.1]:99999"),
        ('mynetworks = ["10.0.0.300/8"]\n', "mynetworks", "10.0.0.300/8"),
        ('smtp_tls_security_level = "sometimes"\n', "smtp_tls_security_level", "sometimes"),
        ('relay_clientcerts = ["AB:CD"]\n', "relay_clientcerts", "AB:CD"),
        ('mydestination = "x"\n', "mydestination", "x"),
        ('[[listener]]\naddress = "127.0.0.1:25"\ntls = "maybe"\n', "listener[0].tls", "maybe"),
    ],
)
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
        gateway = gateway_factory(relay_config(sink.port, minimal_backoff_time='"1h"', maximal_backoff_time='"2h"'))
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
            assert {
                r["queue_id"]: r["state"]
                for r in map(json.loads, gateway.cli("queue", "list", "--json").stdout.splitlines())
            }[first["queue_id"]] == "hold"
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
        gateway = gateway_factory(relay_config(sink.port, minimal_backoff_time='"1h"', maximal_backoff_time='"2h"'))
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


@pytest.mark.parametrize(
    "config, key",
    [
        ('[pipeline]\ninbound = ["antivirus", "nonsense"]\n', "pipeline.inbound"),
        ('[pipeline]\ninbound = ["antivirus"]\n[antivirus]\nclamd = "carrier-pigeon"\n', "antivirus.clamd"),
        (
            '[spam_levels]\ntag_level = 9.0\ntag2_level = 3.0\n[pipeline]\ninbound = ["spamassassin"]\n',
            "spam_levels.tag_level",
        ),
        ('[dkim]\ndomains = ["example.com"]\nalgorithms = ["rsa-sha1"]\n', "dkim.algorithms"),
        ('[antivirsu]\nclamd = "tcp:127.0.0.1:3310"\n', "antivirsu"),  # a table no module owns (a typo)
    ],
)
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


# Every key whose value is a file, with a config that names a missing file there (and valid files elsewhere).
FILE_KEYS = {
    "smtpd_tls_cert_file": 'smtpd_tls_cert_file = "{missing}"\nsmtpd_tls_key_file = "{key}"\n',
    "smtpd_tls_key_file": 'smtpd_tls_cert_file = "{cert}"\nsmtpd_tls_key_file = "{missing}"\n',
    "smtpd_tls_CAfile": 'smtpd_tls_CAfile = "{missing}"\n',
    "smtp_tls_CAfile": 'smtp_tls_CAfile = "{missing}"\n',
    "smtp_tls_cert_file": 'smtp_tls_cert_file = "{missing}"\nsmtp_tls_key_file = "{key}"\n',
    "smtp_tls_key_file": 'smtp_tls_cert_file = "{cert}"\nsmtp_tls_key_file = "{missing}"\n',
    "header_checks.file": '[pipeline]\ninbound = ["header_checks"]\n[header_checks]\nfile = "{missing}"\n',
    "dkim.domain.example.com.rsa_key": '[dkim]\ndomains = ["example.com"]\n'
    '[dkim.domain."example.com"]\nrsa_key = "{missing}"\n',
    "dkim.domain.example.com.ed25519_key": '[dkim]\ndomains = ["example.com"]\nalgorithms = ["ed25519-sha256"]\n'
    '[dkim.domain."example.com"]\ned25519_key = "{missing}"\n',
}


def test_the_file_key_list_covers_every_path_key_of_the_config():
    from gateway.config import _PATH_KEYS

    directories = {"state_dir", "spool_dir"}
    assert set(_PATH_KEYS) - directories <= set(FILE_KEYS)


@pytest.mark.parametrize("key", sorted(FILE_KEYS))
def test_check_config_and_run_refuse_the_same_missing_file(tmp_path, key):
    import trustme

    from tests.harness.ports import free_port

    issued = trustme.CA().issue_cert("gw.test")
    cert, private_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(private_key))
    missing = tmp_path / "no-such-file.pem"
    top, _, tables = FILE_KEYS[key].format(missing=missing, cert=cert, key=private_key).partition("[")
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "var"}"\nmetrics_listen = ""\n{top}'
        f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{free_port()}"\ntls = "starttls"\n'
        + (f"[{tables}" if tables else "")
    )

    checked = run_cli("--config", str(path), "check-config")
    ran = run_cli("--config", str(path), "run")
    for result in (checked, ran):
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"config key '{key}'" in result.stderr and str(missing) in result.stderr, result.stderr


def test_check_config_passes_what_run_starts_with(tmp_path):
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "var"}"\nsmtpd_tls_CAfile = "{ca_file}"\nsmtp_tls_CAfile = "{ca_file}"\n'
    )
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert f"smtpd_tls_CAfile = {ca_file}" in result.stdout
    assert not (tmp_path / "var").exists()  # nothing written: no local CA, no DKIM keys
