"""The gateway image, built from Debian packages and run by a real Docker engine (issue 15 item 6).

``make test-container`` runs these (they are not part of ``make test``: building the image takes a few
minutes). tests/container/conftest.py builds ``deploy/Dockerfile`` with the legacy builder on a base
image made with debootstrap (tests/harness/debian_base_image.py), on the Docker engine of
tests/harness/docker_engine.py: a private dockerd when none runs. Found on the machine this was written
on (Debian bookworm VM, kernel 6.18, root): Debian's dockerd 20.10 runs with its own containerd and
runc, storage driver overlay2 on ext4 (no vfs fallback needed), cgroups v1 (cgroupfs driver), iptables
1.8.9 on nf_tables working; the private daemon is started with ``--bridge=none --iptables=false
--ip-forward=false --ip-masq=false`` so it changes nothing in the host's network set-up, and containers
use ``--network host``.

Each container is configured by the ServerContainers mail-gateway variables alone (the entrypoint
generates /etc/gateway/gateway.toml from them), listens on 127.0.0.1 ports (``GATEWAY_LISTEN``,
``GATEWAY_METRICS_LISTEN``: ports below 1024 cannot be bound by uid 10025 in the host's network
namespace) and relays to an SMTP sink of the test on 127.0.0.1. Shown: the HEALTHCHECK turns healthy
(``--health-interval 1s`` instead of the image's 30 s), a message arrives DKIM-signed with the key the
container generated (verified with dkimpy against the TXT record ``gateway dkim show`` prints);
``docker stop`` with ``--init`` (tini as PID 1 passes SIGTERM on) makes the gateway exit 0, and a
message queued while the relayhost was down stays in the spool volume, where a one-off container's
``gateway queue list`` finds it; ``docker start`` of the same container delivers it. A variable the
gateway cannot honour stops the container with exit status 2.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.container.conftest import LABEL
from tests.container.mail import RECIPIENT, SENDER, dkim_records, dkim_verifies, send
from tests.harness.docker_engine import DockerEngine
from tests.harness.ports import free_ports
from tests.harness.smtp_sink import SmtpSink

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]  # the first test builds the images

CONFIG = "/etc/gateway/gateway.toml"
HEALTHY_TIMEOUT = 120.0  # seconds for the HEALTHCHECK to pass (first start: TLS and DKIM keys are generated)
DELIVERY_TIMEOUT = 60.0  # seconds for a message to reach the sink
STOP_GRACE = 60  # seconds docker stop waits before SIGKILL


@dataclass
class GatewayContainer:
    """One gateway container on the host's network with named spool and config volumes.

    Attributes:
        engine: the Docker engine it runs on.
        image: the gateway image's tag.
        run_id: the session's label value (tests/container/conftest.py).
        smtp_port: its SMTP listener on 127.0.0.1 (STARTTLS offered).
        metrics_port: its /metrics and /healthz listener on 127.0.0.1.
    """

    engine: DockerEngine
    image: str
    run_id: str
    smtp_port: int
    metrics_port: int
    name: str = field(default_factory=lambda: f"smtp-gateway-test-{uuid.uuid4().hex[:8]}")

    @property
    def volumes(self) -> list[str]:
        """``-v`` arguments: the spool and the config volume, named after the container."""
        return ["--volume", f"{self.name}-spool:/var/lib/gateway", "--volume", f"{self.name}-config:/etc/gateway"]

    def create_volumes(self) -> None:
        """Create both volumes with the session's label (so the session's clean-up finds them)."""
        for kind in ("spool", "config"):
            self.engine.docker("volume", "create", "--label", f"{LABEL}={self.run_id}", f"{self.name}-{kind}")

    def run(self, variables: dict[str, str]) -> None:
        """``docker run -d --init --network host`` with ``variables`` as its environment."""
        environment = [arg for key, value in variables.items() for arg in ("--env", f"{key}={value}")]
        self.engine.docker(
            "run",
            "--detach",
            "--init",
            "--network",
            "host",
            "--name",
            self.name,
            "--label",
            f"{LABEL}={self.run_id}",
            "--health-interval",
            "1s",
            "--health-retries",
            "3",
            *self.volumes,
            *environment,
            self.image,
        )

    def state(self) -> dict[str, object]:
        """``docker inspect``'s ``State`` (Status, ExitCode, Health, ...)."""
        state: dict[str, object] = json.loads(
            self.engine.docker("inspect", "--format", "{{json .State}}", self.name).stdout
        )
        return state

    def logs(self) -> str:
        """Everything the container wrote (stdout and stderr)."""
        done = self.engine.docker("logs", self.name)
        return done.stdout + done.stderr

    def wait_healthy(self) -> None:
        """Wait until ``docker inspect`` says healthy; fail at once when it exits or turns unhealthy."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while True:
            state = self.state()
            health = state.get("Health") or {}
            assert isinstance(health, dict)
            assert state["Status"] == "running", f"container {state['Status']}: {self.logs()[-3000:]}"
            if health.get("Status") == "healthy":
                return
            assert health.get("Status") != "unhealthy", f"{health.get('Log')}\n{self.logs()[-3000:]}"
            assert time.monotonic() < deadline, f"not healthy in {HEALTHY_TIMEOUT:g}s: {health}"
            time.sleep(0.5)

    def wait_for_log(self, pattern: str, timeout: float = DELIVERY_TIMEOUT) -> str:
        """The first log line matching the regular expression ``pattern``, waited for up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            match = re.search(f"^.*{pattern}.*$", logs, re.M)
            if match:
                return match.group(0)
            assert time.monotonic() < deadline, f"no log line /{pattern}/ in {timeout:g}s: {logs[-3000:]}"
            time.sleep(0.5)

    def gateway(self, *args: str) -> str:
        """``gateway --config ... ARGS`` inside the running container (as uid 10025); its standard output."""
        return self.engine.docker("exec", self.name, "gateway", "--config", CONFIG, *args).stdout

    def dkim_records(self) -> dict[str, str]:
        """The TXT records of the container's DKIM keys: ``{"default._domainkey.example.com": "v=DKIM1; ..."}``."""
        return dkim_records(self.gateway("dkim", "show"))


def seed_variables(container: GatewayContainer, sink: SmtpSink, **extra: str) -> dict[str, str]:
    """The ServerContainers mail-gateway variables of these tests (plus the two ``GATEWAY_*`` port moves)."""
    return {
        "MAIL_FQDN": "mx.example.com",
        "RELAYHOST": f"[127.0.0.1]:{sink.port}",
        "DISABLE_AMAVIS": "1",
        "DKIM_DOMAINS": "example.com",
        "POSTFIX_RELAY_DOMAINS": "example.net",
        "GATEWAY_LISTEN": f"smtp=127.0.0.1:{container.smtp_port}/starttls",
        "GATEWAY_METRICS_LISTEN": f"127.0.0.1:{container.metrics_port}",
        **extra,
    }


@pytest.fixture
def container(docker_engine: DockerEngine, gateway_image: str, run_id: str) -> Iterator[GatewayContainer]:
    """A gateway container (not yet run) with its volumes; removed with them at the end of the test."""
    smtp_port, metrics_port = free_ports(2)
    made = GatewayContainer(docker_engine, gateway_image, run_id, smtp_port, metrics_port)
    made.create_volumes()
    yield made
    docker_engine.docker("rm", "--force", made.name, check=False)
    docker_engine.docker("volume", "rm", f"{made.name}-spool", f"{made.name}-config", check=False)


def test_seeded_container_turns_healthy_and_relays_dkim_signed_mail(container: GatewayContainer) -> None:
    with SmtpSink() as sink:
        container.run(seed_variables(container, sink))
        container.wait_healthy()
        assert "generating it from the environment" in container.logs()
        assert 'myhostname = "mx.example.com"' in container.engine.docker("exec", container.name, "cat", CONFIG).stdout
        assert container.engine.docker("exec", container.name, "id", "-u").stdout.strip() == "10025"
        queue_id = send(container.smtp_port, "through the container")
        (message,) = sink.wait_for_messages(1, timeout=DELIVERY_TIMEOUT)
    assert message.mail_from == SENDER and message.rcpt_tos == [RECIPIENT]
    assert message.data.startswith(b"DKIM-Signature: ") or b"\r\nDKIM-Signature: " in message.data
    assert b"Subject: through the container" in message.data
    records = container.dkim_records()
    assert "default._domainkey.example.com" in records, records
    assert dkim_verifies(message.data, records)
    assert dkim_verifies(message.data.replace(b"through the container\r\n", b"tampered\r\n"), records) is False
    assert re.search(rf"{queue_id}: to=<{RECIPIENT}>.*status=sent", container.logs())


def test_docker_stop_keeps_queued_mail_in_the_volume_and_a_restart_delivers_it(container: GatewayContainer) -> None:
    sink = SmtpSink()  # bound, not listening: the relayhost is down
    try:
        # A deferred message is due again after minimal_backoff_time: 1 s here instead of 300 s, so the
        # restarted gateway's first queue run takes it.
        container.run(seed_variables(container, sink, GATEWAY_MINIMAL_BACKOFF_TIME="1"))
        container.wait_healthy()
        queue_id = send(container.smtp_port, "queued while the relayhost is down")
        container.wait_for_log(rf"{queue_id}: to=<{RECIPIENT}>.*status=deferred")

        stopped = container.engine.docker("stop", "--time", str(STOP_GRACE), container.name, timeout=STOP_GRACE + 30)
        assert stopped.returncode == 0
        state = container.state()
        assert state["Status"] == "exited" and state["ExitCode"] == 0, (state, container.logs()[-3000:])
        assert state["OOMKilled"] is False
        assert container.logs().rstrip().endswith("gateway stopped")

        # The spool volume, read by the image's own `gateway queue list` in a one-off container:
        listed = container.engine.docker(
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            f"{LABEL}={container.run_id}",
            *container.volumes,
            container.image,
            "queue",
            "list",
        ).stdout
        assert queue_id in listed and RECIPIENT in listed, listed

        sink.start()
        container.engine.docker("start", container.name)
        (message,) = sink.wait_for_messages(1, timeout=DELIVERY_TIMEOUT)
        container.wait_for_log(rf"{queue_id}: to=<{RECIPIENT}>.*status=sent")
        container.wait_healthy()
        assert queue_id not in container.gateway("queue", "list")
    finally:
        sink.stop()
    assert message.rcpt_tos == [RECIPIENT] and b"Subject: queued while the relayhost is down" in message.data
    assert dkim_verifies(message.data, container.dkim_records())


def test_a_variable_the_gateway_cannot_honour_stops_the_container_with_status_2(
    docker_engine: DockerEngine, gateway_image: str, run_id: str
) -> None:
    done = docker_engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        f"{LABEL}={run_id}",
        "--env",
        "MAIL_FQDN=mx.example.com",
        "--env",
        "DISABLE_AMAVIS=1",
        "--env",
        "POSTFIX_MYDESTINATION=example.com",
        gateway_image,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refused POSTFIX_MYDESTINATION" in done.stderr
