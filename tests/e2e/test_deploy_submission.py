"""The compose file's ``submission`` service, run as shipped: deploy/submission/gateway.toml.

No Docker engine runs these tests, so the service's config file is run by a real
gateway process with only its addresses moved onto loopback (listeners, relayhost,
clamd, metrics) and ``state_dir`` moved into the test's folder; every other key is
the shipped one. Its first user is added the way deploy/README.md says, through the
image's real entrypoint script (``passwd USER``, password on stdin), after the
gateway has started without a password file.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
from pathlib import Path

from tests.harness.helpers import client_tls, swaks_login_and_send
from tests.harness.ports import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SHIPPED = DEPLOY / "submission" / "gateway.toml"
OUTSIDER = "127.0.0.3"  # outside mynetworks (narrowed from the container's 127.0.0.0/8 to 127.0.0.1)


def set_key(text: str, line: str, replacement: str) -> str:
    """Replace exactly one whole ``line`` of the shipped file (the test fails if the file changed shape)."""
    assert text.count(line + "\n") == 1, line
    return text.replace(line + "\n", replacement + "\n")


def shipped_config_on_loopback(sink_port: int, clamd_address: str, ports: dict[str, int]) -> str:
    text = SHIPPED.read_text()
    text = re.sub(r'^state_dir = "/var/lib/gateway" .*\n', "", text, count=1, flags=re.M)  # the harness sets it
    text = set_key(text, 'relayhost = ["[smtp.example.com]:587"]', f'relayhost = ["[127.0.0.1]:{sink_port}"]')
    text = set_key(text, 'mynetworks = ["127.0.0.0/8"]', 'mynetworks = ["127.0.0.1/32"]')
    text = re.sub(r'^metrics_listen = "0.0.0.0:9464" .*\n', 'metrics_listen = "127.0.0.1:0"\n', text, flags=re.M)
    text = set_key(text, 'address = "0.0.0.0:587"', f'address = "127.0.0.1:{ports["submission"]}"')
    text = set_key(text, 'address = "0.0.0.0:465"', f'address = "127.0.0.1:{ports["smtps"]}"')
    return set_key(text, 'clamd = "tcp:clamav:3310"', f'clamd = "{clamd_address}"')


def entrypoint_passwd(config: Path, login: str, password: str) -> subprocess.CompletedProcess[str]:
    """``docker compose run --rm -T submission passwd LOGIN < password``: the real entrypoint, config path moved."""
    script = config.parent / "docker-entrypoint.sh"
    script.write_text(
        (DEPLOY / "docker-entrypoint.sh").read_text().replace("CONFIG=/etc/gateway/gateway.toml", f"CONFIG={config}")
    )
    environ = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(config.parent)}
    return subprocess.run(
        ["sh", str(script), "passwd", login],
        input=password + "\n",
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_the_submission_service_starts_without_users_then_takes_the_first_one_added(gateway_factory, sink, clamd):
    ports = {"submission": free_port(), "smtps": free_port()}
    gateway = gateway_factory(shipped_config_on_loopback(sink.port, clamd.tcp_address, ports))
    with gateway:
        with smtplib.SMTP("127.0.0.1", ports["submission"], source_address=(OUTSIDER, 0), timeout=30) as client:
            client.starttls(context=client_tls(gateway.ca_file))
            client.ehlo("client.test")
            assert client.docmd("MAIL", "FROM:<alice@example.com>") == (530, b"5.7.0 Authentication required")
            plain = base64.b64encode(b"\0alice@example.com\0first-secret").decode()
            assert client.docmd("AUTH", "PLAIN " + plain)[0] == 535
        gateway.wait_for_log(r"passwd does not exist: no user can log in until `gateway passwd USER` adds one")

        added = entrypoint_passwd(gateway.config_path, "alice@example.com", "first-secret")
        assert added.returncode == 0, added.stdout + added.stderr
        assert added.stdout.startswith(f"added alice@example.com in {gateway.state_dir / 'passwd'}")

        for listener, tls_option in (("submission", "--tls"), ("smtps", "--tlsc")):
            sent = swaks_login_and_send(
                ports[listener],
                mechanism="PLAIN",
                user="alice@example.com",
                password="first-secret",
                sender="alice@example.com",
                recipient="friend@elsewhere.org",
                source=OUTSIDER,
                tls_option=tls_option,
                subject=f"compose {listener}",
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
        messages = sink.wait_for_messages(2)
    for message in messages:
        assert message.rcpt_tos == ["friend@elsewhere.org"]
        assert b"with ESMTPSA id" in message.data
        signature = re.search(rb"^DKIM-Signature:.*?(?=^\S)", message.data, re.M | re.S)
        assert signature and b"d=example.com;" in signature.group() and b"s=submission;" in signature.group()
