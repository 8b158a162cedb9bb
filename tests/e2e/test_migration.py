"""Migration from the ServerContainers image, end to end: seed_env writes a config a real gateway runs.

The listeners are moved with ``GATEWAY_LISTEN`` (a container user without a
config file), and each signing domain's DKIM record is logged at every start,
as the image did, not only when the key is created.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys

from tests.harness.gateway_process import GatewayProcess
from tests.harness.ports import free_port


def _seed(tmp_path, env: dict[str, str], *args: str) -> str:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "POSTFIX_", "DKIM_", "AMAVIS_", "DISABLE_", "MAIL_"))
    }
    environ.update(env)
    output = tmp_path / "seeded.toml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.migrate.servercontainers",
            "--output",
            str(output),
            "--force",
            "--root",
            str(tmp_path / "root"),
            "--metrics-listen",
            "127.0.0.1:0",
            *args,
        ],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # GatewayProcess writes state_dir itself
    return "\n".join(line for line in output.read_text().splitlines() if not line.startswith("state_dir ="))


def test_gateway_listen_moves_the_listeners_and_dkim_records_are_logged_at_every_start(tmp_path, sink):
    smtp_port, smtps_port = free_port(), free_port()
    listen = f"smtp=127.0.0.1:{smtp_port}/starttls smtps=127.0.0.1:{smtps_port}/implicit"
    config = _seed(
        tmp_path,
        {
            "MAIL_FQDN": "mx.example.com",
            "DISABLE_AMAVIS": "1",
            "DKIM_DOMAINS": "example.com example.org",
            "GATEWAY_LISTEN": listen,
            "RELAYHOST": f"[127.0.0.1]:{sink.port}",
        },
    )
    assert f'address = "127.0.0.1:{smtps_port}"' in config
    gateway = GatewayProcess(tmp_path / "gw", config)
    records = r"dkim: d=(example\.com|example\.org) s=default a=rsa-sha256: DNS record default\._domainkey\."
    try:
        gateway.start()
        ready = gateway.wait_for_log("gateway ready")[0]
        assert f"smtp=127.0.0.1:{smtp_port}/starttls smtps=127.0.0.1:{smtps_port}/implicit" in ready
        first = gateway.wait_for_log(records, count=2)
        assert len(re.findall(r"dkim: generated rsa-sha256 key", gateway.log_text)) == 2
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.starttls()
            assert (
                client.sendmail(
                    "a@example.com", ["b@elsewhere.org"], b"From: a@example.com\r\nSubject: moved\r\n\r\nx\r\n"
                )
                == {}
            )
        (message,) = sink.wait_for_messages(1)
        assert b"DKIM-Signature: " in message.data
        gateway.stop()

        gateway.start()  # the keys exist now: nothing is generated, the records are logged all the same
        second = gateway.wait_for_log(records, count=2)
        assert "dkim: generated" not in gateway.log_text
        assert [line.split("DNS record ", 1)[1] for line in second] == [
            line.split("DNS record ", 1)[1] for line in first
        ]
    finally:
        gateway.stop()


def test_gateway_listen_given_to_the_gateway_itself_overrides_the_config_file(gateway_factory):
    port = free_port()
    gateway = gateway_factory("", env={"GATEWAY_LISTEN": f"moved=127.0.0.1:{port}/none"})
    with gateway:
        assert f"listeners=moved=127.0.0.1:{port}/none" in gateway.wait_for_log("gateway ready")[0]
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.ehlo()[0] == 250
