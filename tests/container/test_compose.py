"""``docker-compose up`` of the shipped deploy/docker-compose.yml on a real Docker engine (issue 15 item 6).

``make test-container`` runs this with Debian's docker-compose 1.29 (Compose v1) against the engine of
tests/harness/docker_engine.py. The compose file runs as shipped, with one override file (written by the
test, passed with a second ``-f``) that changes only what cannot be had or must differ here:

* **images**: the Docker Hub images cannot be pulled (no registry is reachable). ``gateway`` and
  ``submission`` run the image tests/container/conftest.py builds from deploy/Dockerfile; ``clamav``,
  ``rspamd`` and ``prometheus`` run stand-ins built from Debian packages on the same debootstrap base
  (tests/harness/compose_images.py, tests/container/images/): clamd with an EICAR-only signature database
  (freshclam cannot run), rspamd with its network modules off, Prometheus 2.42. An override rather than
  retagging them as ``clamav/clamav:stable`` etc.: on a shared engine those names may be real images.
  **Grafana is not started**: it has no Debian package, so ``up`` names the other five services;
  its provisioning stays validated by tests/e2e/test_deploy_files.py.
* **the network**: ``mail`` is an external network the test creates first (a bridge network: user-defined
  bridges work on the private dockerd with ``--iptables=false``: containers reach each other and the host
  over the bridge, nothing is forwarded or NATed), because the gateway's seed variables need the bridge's
  gateway address before the containers are made: ``RELAYHOST`` is an SMTP sink of the test bound on that
  address (a private address of this machine, reachable from the containers), and ``ADDITIONAL_MYNETWORKS``
  trusts exactly that address, the source of connections to published ports (docker-proxy, the userland
  proxy: without iptables there is no DNAT).
* **published ports** through the compose file's own variables (``PUBLISH_SMTP``, ``PUBLISH_SMTPS``,
  ``PUBLISH_SUBMISSION``, ``PROMETHEUS_PORT``: an override would add ports, not replace them): free ports
  on 127.0.0.1 only.
* **healthchecks** every 2 s instead of 30 s (the same ``gateway health`` command).

Shown: both gateway services turn healthy (``gateway health`` asks ``/readyz``, which fails while clamd or
rspamd does not answer); a message sent to the published SMTP port arrives at the sink DKIM-signed (verified
with the key ``gateway dkim show`` prints), with ``X-Virus-Scanned`` (clamd scanned it) and rspamd's
``X-Spam-Status``; EICAR is refused with clamd's signature name; Prometheus, on its published port, has
scraped both gateways (``up == 1`` for ``gateway:9464`` and ``submission:9464`` of the shipped
prometheus.yml). ``docker-compose down -v`` then removes the containers and volumes, checked by label.
"""

from __future__ import annotations

import json
import re
import smtplib
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from tests.container.conftest import LABEL, ROOT
from tests.container.mail import RECIPIENT, SENDER, dkim_records, dkim_verifies, send
from tests.harness.clamd import ClamdDaemon
from tests.harness.docker_engine import DockerEngine
from tests.harness.ports import free_ports
from tests.harness.smtp_sink import SmtpSink

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]  # the first test builds the images

COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
STARTED = ("gateway", "submission", "clamav", "rspamd", "prometheus")  # all but grafana (no Debian package)
CONFIG = "/etc/gateway/gateway.toml"
HEALTHY_TIMEOUT = 180.0  # seconds: first start generates TLS and DKIM keys; rspamd compiles its Hyperscan db
DELIVERY_TIMEOUT = 60.0  # seconds for a message to reach the sink
SCRAPE_TIMEOUT = 90.0  # seconds for Prometheus to scrape both targets (the shipped interval is 15 s)
DOWN_TIMEOUT = 300.0  # seconds for docker-compose down (each gateway stops within its stop_grace_period)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: ignore *_proxy


@dataclass
class ComposeProject:
    """One ``docker-compose`` project of the shipped file plus the test's override, on ``engine``.

    Attributes:
        engine: the Docker engine.
        name: the project name (``-p``), ``smtp-gateway-test-<8 hex digits>``.
        override: the override file's path.
        ports: the published ports on 127.0.0.1 by variable (``PUBLISH_SMTP``, ..., ``PROMETHEUS_PORT``).
    """

    engine: DockerEngine
    name: str
    override: Path
    ports: dict[str, int]

    def compose(self, *args: str, timeout: float = 300.0, check: bool = True) -> str:
        """``docker-compose -p NAME -f deploy/docker-compose.yml -f OVERRIDE ARGS``; its standard output."""
        environment = {
            key: f"127.0.0.1:{port}" if key.startswith("PUBLISH_") else str(port) for key, port in self.ports.items()
        }
        files = ("-p", self.name, "-f", str(COMPOSE_FILE), "-f", str(self.override))
        return self.engine.compose(*files, *args, environment=environment, timeout=timeout, check=check).stdout

    def container(self, service: str) -> str:
        """The ID of ``service``'s container."""
        container_id = self.compose("ps", "--quiet", service).strip()
        assert container_id, f"no container for {service}"
        return container_id

    def wait_healthy(self, service: str) -> None:
        """Wait until the service's healthcheck passes; fail at once when it exits or turns unhealthy."""
        container_id = self.container(service)
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while True:
            state = json.loads(self.engine.docker("inspect", "--format", "{{json .State}}", container_id).stdout)
            health = state.get("Health") or {}
            assert state["Status"] == "running", f"{service} {state['Status']}: {self.logs(service)}"
            if health.get("Status") == "healthy":
                return
            assert health.get("Status") != "unhealthy", f"{health.get('Log')}\n{self.logs()}"
            assert time.monotonic() < deadline, f"{service} not healthy in {HEALTHY_TIMEOUT:g}s: {health}"
            time.sleep(1)

    def logs(self, *services: str) -> str:
        """The end of the services' logs (all services when none is named)."""
        return self.compose("logs", "--no-color", *services, check=False)[-4000:]

    def gateway(self, *args: str) -> str:
        """``gateway --config ... ARGS`` in the running ``gateway`` service; its standard output."""
        return self.compose("exec", "-T", "gateway", "gateway", "--config", CONFIG, *args)

    def labelled(self, kind: str) -> list[str]:
        """IDs of the project's ``containers`` or ``volumes`` (Compose's own project label)."""
        label = f"label=com.docker.compose.project={self.name}"
        if kind == "containers":
            return self.engine.docker("ps", "--all", "--quiet", "--filter", label).stdout.split()
        return self.engine.docker("volume", "ls", "--quiet", "--filter", label).stdout.split()


def override(
    images: dict[str, str], network: str, relayhost: str, proxy_address: str, run_id: str
) -> dict[str, object]:
    """The override file's content (see the module docstring); every service and volume gets the run's label."""

    def health() -> dict[str, str]:  # a fresh dict each time: no YAML aliases in the file
        return {"interval": "2s"}

    def label() -> dict[str, str]:
        return {LABEL: run_id}

    return {
        "services": {
            "gateway": {
                "image": images["gateway"],
                "environment": {
                    "RELAYHOST": relayhost,
                    "ADDITIONAL_MYNETWORKS": f"{proxy_address}/32",
                },
                "healthcheck": health(),
                "labels": label(),
            },
            "submission": {"image": images["gateway"], "healthcheck": health(), "labels": label()},
            **{
                service: {"image": images[service], "labels": label()} for service in ("clamav", "rspamd", "prometheus")
            },
        },
        "networks": {"mail": {"external": True, "name": network}},
        "volumes": {
            volume: {"labels": label()}
            for volume in yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]  # all of them: compose makes all
        },
    }


@pytest.fixture
def network(docker_engine: DockerEngine, run_id: str) -> Iterator[tuple[str, str]]:
    """A bridge network for the project's ``mail``: (its name, its gateway address on this host); removed after."""
    name = f"smtp-gateway-test-{uuid.uuid4().hex[:8]}-mail"
    docker_engine.docker("network", "create", "--driver", "bridge", "--label", f"{LABEL}={run_id}", name)
    try:
        config = json.loads(
            docker_engine.docker("network", "inspect", "--format", "{{json .IPAM.Config}}", name).stdout
        )
        yield name, config[0]["Gateway"]
    finally:
        docker_engine.docker("network", "rm", name, check=False)
    assert name not in docker_engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()


@pytest.fixture
def sink(network: tuple[str, str]) -> Iterator[SmtpSink]:
    """The relayhost: an SMTP sink on the network's gateway address (a private address of this machine)."""
    with SmtpSink(host=network[1]) as started:
        yield started


@pytest.fixture
def project(
    docker_engine: DockerEngine,
    gateway_image: str,
    service_images: dict[str, str],
    network: tuple[str, str],
    sink: SmtpSink,
    run_id: str,
    tmp_path: Path,
) -> Iterator[ComposeProject]:
    """The project, not yet up; ``docker-compose down -v`` at the end, and nothing of it left (checked)."""
    images = {"gateway": gateway_image, **service_images}
    content = override(images, network[0], f"[{sink.host}]:{sink.port}", network[1], run_id)
    (tmp_path / "override.yml").write_text(yaml.safe_dump(content, sort_keys=False))
    ports = dict(zip(("PUBLISH_SMTP", "PUBLISH_SMTPS", "PUBLISH_SUBMISSION", "PROMETHEUS_PORT"), free_ports(4)))
    made = ComposeProject(docker_engine, f"smtp-gateway-test-{uuid.uuid4().hex[:8]}", tmp_path / "override.yml", ports)
    try:
        yield made
    finally:
        print(made.compose("logs", "--no-color", check=False)[-20000:])  # pytest shows it when the test failed
        made.compose("down", "--volumes", "--remove-orphans", "--timeout", "60", timeout=DOWN_TIMEOUT, check=False)
    assert made.labelled("containers") == [] and made.labelled("volumes") == []


def prometheus_up(port: int) -> dict[str, str]:
    """``up{job="smtp-gateway"}`` from Prometheus' query API on 127.0.0.1:``port``: ``{instance: "1"|"0"}``."""
    query = urllib.parse.urlencode({"query": 'up{job="smtp-gateway"}'})
    with _NO_PROXY.open(f"http://127.0.0.1:{port}/api/v1/query?{query}", timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return {sample["metric"]["instance"]: sample["value"][1] for sample in body["data"]["result"]}


def wait_for_scrapes(port: int, instances: set[str]) -> dict[str, str]:
    """Wait until Prometheus reports ``up`` == 1 for every one of ``instances``; the last answer."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    while True:
        try:
            up = prometheus_up(port)
        except OSError:  # not listening yet
            up = {}
        if all(up.get(instance) == "1" for instance in instances):
            return up
        assert time.monotonic() < deadline, f"Prometheus: up = {up} after {SCRAPE_TIMEOUT:g}s"
        time.sleep(1)


def send_eicar(port: int) -> tuple[int, bytes]:
    """EICAR as an attachment to the published port; the DATA reply (code, text)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER, RECIPIENT, "eicar"
    message.set_content("attached\n")
    message.add_attachment(ClamdDaemon.eicar_bytes(), maintype="application", subtype="octet-stream", filename="e.com")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls()
        client.ehlo("client.example.com")
        client.mail(SENDER)
        client.rcpt(RECIPIENT)
        return client.data(message.as_bytes())


def test_compose_up_scans_signs_and_relays_mail_and_prometheus_scrapes_both_gateways(
    project: ComposeProject, sink: SmtpSink
) -> None:
    project.compose("up", "--detach", *STARTED)
    assert project.compose("ps", "--quiet", "grafana").strip() == ""  # not created: no image
    project.wait_healthy("gateway")
    project.wait_healthy("submission")

    queue_id = send(project.ports["PUBLISH_SMTP"], "through docker-compose")
    (message,) = sink.wait_for_messages(1, timeout=DELIVERY_TIMEOUT)
    assert message.mail_from == SENDER and message.rcpt_tos == [RECIPIENT]
    header = message.data.split(b"\r\n\r\n", 1)[0].decode()
    assert "\r\nX-Virus-Scanned: ClamAV on clamd\r\n" in header, header
    assert re.search(r"\r\nX-Spam-Status: No, score=-?[0-9.]+ .*engine=rspamd", header), header
    assert header.startswith("DKIM-Signature: ") and "d=example.com" in header, header
    records = dkim_records(project.gateway("dkim", "show"))
    assert dkim_verifies(message.data, records), records
    assert dkim_verifies(message.data.replace(b"through docker-compose\r\n", b"tampered\r\n"), records) is False
    assert re.search(rf"{queue_id}: to=<{RECIPIENT}>.*status=sent", project.logs("gateway")), project.logs("gateway")

    code, reply = send_eicar(project.ports["PUBLISH_SMTP"])
    assert code == 554 and b"Virus found: Eicar-Test-" in reply, (code, reply)

    up = wait_for_scrapes(project.ports["PROMETHEUS_PORT"], {"gateway:9464", "submission:9464"})
    assert up == {"gateway:9464": "1", "submission:9464": "1"}


def test_compose_v1_accepts_the_shipped_file():
    """Debian's Compose v1 (installed by make test-container) renders the shipped file as it is."""
    import os
    import subprocess

    environment = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "PUBLISH_"))}
    done = subprocess.run(
        ["/usr/bin/docker-compose", "--file", str(ROOT / "deploy" / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    shipped = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    assert set(rendered["services"]) == set(shipped["services"])
    gateway_ports = rendered["services"]["gateway"]["ports"]
    assert [(port["published"], port["target"]) for port in gateway_ports] == [(25, 25)]
