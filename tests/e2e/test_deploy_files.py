"""The deployment files under deploy/: each checked by the strongest validator that runs offline.

What runs (no Docker engine and no cluster in ``make test``; ``make test-container`` builds and runs the
image on a real engine: tests/container):

* every YAML file: parsed with PyYAML (``safe_load_all``);
* Kubernetes manifests: validated against the Kubernetes OpenAPI schemas bundled in the
  ``kubernetes-validate`` package (strict: unknown fields fail), for the oldest and the
  newest Kubernetes version it ships that we support; the ServiceMonitor CRD has no
  bundled schema, so it gets structural checks (apiVersion/kind/selector/endpoints) and
  cross-references (its selector and port name match the metrics Service); ``kubectl
  kustomize`` renders ``deploy/k8s`` when kubectl is installed; the ConfigMap's
  gateway.toml is validated by the gateway's own config code;
* docker-compose.yml: structural checks (services, images and build, ports, volumes,
  networks, depends_on); ``docker-compose config`` (Debian's Compose v1, its schema) runs in
  tests/container/test_compose.py, where ``make test-container`` has installed it
  (``make test-container`` installs it and runs the file: tests/container/test_compose.py, all services
  but Grafana, which has no Debian package), no top-level ``name:`` (Compose v1 refuses it; deploy/.env
  names the project); its seed environment is translated by ``gateway.migrate.servercontainers``
  without refusal;
* prometheus.yml: ``promtool check config`` (Debian prometheus package) when present;
* the systemd unit: ``systemd-analyze verify`` and ``systemd-analyze security --offline``
  when systemd-analyze exists, plus key-level checks always;
* the Dockerfile: instruction-level checks (non-root USER, HEALTHCHECK running
  ``gateway ... health``, VOLUME, EXPOSE, STOPSIGNAL, COPY sources present); the
  entrypoint: ``sh -n`` and a real run of it (seed, then ``gateway check-config``);
* the Grafana dashboard: every metric name in its PromQL exists in the ``/metrics`` of a
  real gateway that relayed a message, and every expression parses in a real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import build
from gateway.migrate import servercontainers as seed_env
from gateway.values import parse_listen
from tests.harness import prometheus as prometheus_harness
from tests.harness.helpers import http_get, metrics_after_one_delivery, relay_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
GATEWAY_UID = 10025
SHUTDOWN_TIMEOUT = 30  # gateway.app.Gateway's default: open transactions may take this long after SIGTERM


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


DRAIN_POD = K8S / "drain" / "drain-pod.yaml"


def k8s_documents(with_drain: bool = False) -> list[dict[str, Any]]:
    """The manifests of kustomization.yaml (and the hand-applied drain Pod when asked)."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(load_yaml(path))
    return docs + (load_yaml(DRAIN_POD) if with_drain else [])


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in k8s_documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


def selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ---- YAML ----


def test_there_are_yaml_files_to_check():
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {
        "docker-compose.yml",
        "prometheus.yml",
        "k8s/statefulset.yaml",
        "grafana/provisioning/datasources/prometheus.yml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses(path):
    docs = load_yaml(path)
    assert docs and all(isinstance(doc, dict) for doc in docs), path


# ---- Kubernetes ----


def _schema_versions() -> list[str]:
    from kubernetes_validate import utils

    versions = sorted(
        (v for v in utils.all_versions() if not v.endswith("-strict")),
        key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3]),
    )
    usable = [v for v in versions if tuple(int(x) for x in re.findall(r"\d+", v)[:2]) >= (1, 27)]
    return sorted({re.match(r"\d+\.\d+\.\d+", usable[0]).group(), re.match(r"\d+\.\d+\.\d+", usable[-1]).group()})


@pytest.mark.parametrize("version", _schema_versions())
def test_kubernetes_manifests_validate_against_the_openapi_schemas(version):
    import kubernetes_validate

    validated, structural = [], []
    for doc in k8s_documents(with_drain=True):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            validated.append(doc["kind"])
        except kubernetes_validate.SchemaNotFoundError:
            structural.append(doc["kind"])
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "Pod"} <= set(validated)
    assert structural == ["ServiceMonitor"]  # a CRD: checked in test_service_monitor_scrapes_the_metrics_port


def test_every_manifest_has_api_version_kind_and_name():
    for doc in k8s_documents(with_drain=True):
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_resource():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(d["kind"] for d in k8s_documents())
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == "smtp-gateway:0.1.0"


def test_statefulset_has_one_spool_volume_per_replica_and_drains_on_termination():
    sts = find("StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    claims = {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/var/lib/gateway"] in claims
    assert claims[mounts["/var/lib/gateway"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["gateway", "--config", "/etc/gateway/gateway.toml", "drain"]
    config = build(tomllib.loads(find("ConfigMap")["data"]["gateway.toml"]))
    # open transactions, then delivery for drain_timeout, then at least a minute to hand the rest over
    assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_TIMEOUT + config.drain_timeout + 60
    headless = find("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selected(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == GATEWAY_UID
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in security["sysctls"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["enableServiceLinks"] is False


def test_probes_use_readyz_for_readiness_and_healthz_for_liveness_on_the_metrics_port():
    container = find("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"smtp": 25, "smtps": 465, "submission": 587, "metrics": 9464}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe


def test_services_expose_smtp_and_metrics_ports_of_the_pods():
    pod_template = find("StatefulSet")["spec"]["template"]
    container_ports = {p["name"] for p in pod_template["spec"]["containers"][0]["ports"]}
    smtp = find("Service", "smtp-gateway")
    assert {p["port"] for p in smtp["spec"]["ports"]} == {25, 465, 587}
    assert smtp["spec"]["externalTrafficPolicy"] == "Local"  # client addresses decide relay permission
    for service in (smtp, find("Service", "smtp-gateway-headless")):
        assert selected(service["spec"]["selector"], pod_template["metadata"]["labels"])
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports


def test_pod_disruption_budget_selects_the_pods():
    pdb = find("PodDisruptionBudget")
    labels = find("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert selected(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1


def test_service_monitor_scrapes_the_metrics_port():
    monitor = find("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = [
        s
        for s in k8s_documents()
        if s["kind"] == "Service" and selected(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == ["smtp-gateway-headless"]
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"] and all(
        e["port"] in port_names and e.get("path", "/metrics") == "/metrics" for e in monitor["spec"]["endpoints"]
    )


def test_drain_pod_runs_the_statefulset_config_on_a_spool_claim_outside_every_service():
    (drain,) = load_yaml(DRAIN_POD)
    pod = find("StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in drain["spec"]["volumes"]}
    assert volumes["config"] == next(v for v in pod["volumes"] if v["name"] == "config")
    template = find("StatefulSet")["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    claim = volumes["spool"]["persistentVolumeClaim"]["claimName"]
    assert re.fullmatch(rf"{template}-smtp-gateway-\d+", claim), claim
    mounts = {m["mountPath"]: m["name"] for m in drain["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/var/lib/gateway"] == "spool" and mounts["/etc/gateway"] == "config"
    for service in (d for d in k8s_documents() if d["kind"] in ("Service", "PodDisruptionBudget")):
        selector = service["spec"].get("selector", {})
        selector = selector.get("matchLabels", selector)
        assert not selected(selector, drain["metadata"]["labels"]), service["metadata"]["name"]


def test_configmap_and_secrets_are_mounted_with_every_file_the_config_names():
    pod = find("StatefulSet")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/gateway" and mount["readOnly"] is True
    files = {}
    for source in volume["projected"]["sources"]:
        ((kind, ref),) = source.items()
        obj = find({"configMap": "ConfigMap", "secret": "Secret"}[kind], ref["name"])
        keys = set(obj.get("data", {})) | set(obj.get("stringData", {}))
        for item in ref["items"]:
            assert item["key"] in keys, (ref["name"], item["key"])
            files[f"/etc/gateway/{item['path']}"] = kind
    assert files["/etc/gateway/gateway.toml"] == "configMap"
    raw = tomllib.loads(find("ConfigMap")["data"]["gateway.toml"])
    named = [
        raw["smtpd_tls_cert_file"],
        raw["smtpd_tls_key_file"],
        *(d["rsa_key"] for d in raw["dkim"]["domain"].values()),
    ]
    assert all(files.get(path) == "secret" for path in named), (named, files)


def test_configmap_gateway_toml_is_a_valid_gateway_config():
    from gateway.dkim.settings import DkimSettings
    from gateway.pipeline.build import ScanSwitches
    from policies import REGISTRY

    raw = tomllib.loads(find("ConfigMap")["data"]["gateway.toml"])
    config = build(raw)
    assert str(config.state_dir) == "/var/lib/gateway"
    assert config.metrics_listen == ("0.0.0.0", 9464)
    assert sorted(listener.port for listener in config.listeners) == [25, 465, 587]
    for name in set(raw["pipeline"]["inbound"]) | set(raw["pipeline"]["outbound"]):
        REGISTRY[name](config)
    ScanSwitches.from_config(config)
    assert DkimSettings.from_config(config).enabled


# ---- docker compose ----


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "docker-compose.yml")[0]


def test_compose_services_images_and_build():
    services = compose()["services"]
    assert set(services) == {"gateway", "submission", "clamav", "rspamd", "prometheus", "grafana"}
    gateway = services["gateway"]
    assert services["submission"]["image"] == gateway["image"] and "build" not in services["submission"]
    context = (DEPLOY / gateway["build"]["context"]).resolve()
    assert context == ROOT and (context / gateway["build"]["dockerfile"]).is_file()
    assert (context / "pyproject.toml").is_file()
    images = {name: service.get("image", "").split(":")[0] for name, service in services.items()}
    assert images == {
        "gateway": "smtp-gateway",
        "submission": "smtp-gateway",
        "clamav": "clamav/clamav",
        "rspamd": "rspamd/rspamd",
        "prometheus": "prom/prometheus",
        "grafana": "grafana/grafana",
    }
    for name, service in services.items():
        assert "build" in service or ":" in service["image"], name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)


def test_compose_ports_volumes_and_networks():
    spec = compose()
    published = {"gateway": {25}, "submission": {465, 587}}
    spools = set()
    for name, ports in published.items():
        gateway = spec["services"][name]
        assert {int(p.split(":")[-1]) for p in gateway["ports"]} == ports, name
        assert all(not p.startswith(("9464", "0.0.0.0:9464")) for p in gateway["ports"])  # metrics stay internal
        targets = {v.split(":")[1]: v.split(":")[0] for v in gateway["volumes"]}
        assert "/var/lib/gateway" in targets and ({"/etc/gateway", "/etc/gateway/gateway.toml"} & set(targets))
        spools.add(targets["/var/lib/gateway"])
        assert gateway["sysctls"]["net.ipv4.ip_unprivileged_port_start"] in ("0", 0)
        assert gateway["stop_signal"] == "SIGTERM"
        # the healthcheck asks the running gateway (its /readyz), with the config the service runs
        assert gateway["healthcheck"]["test"] == [
            "CMD",
            "gateway",
            "--config",
            "/etc/gateway/gateway.toml",
            "health",
        ], name
    assert len(spools) == 2  # one spool volume per gateway, never shared
    listen = spec["services"]["gateway"]["environment"]["GATEWAY_LISTEN"]
    assert [table["address"] for table in parse_listen(listen)] == ["0.0.0.0:25"]
    declared_volumes = set(spec["volumes"])
    declared_networks = set(spec["networks"])
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in declared_volumes, (name, source)
        assert set(service.get("networks", [])) <= declared_networks, name
    for published in spec["services"]["prometheus"]["ports"] + spec["services"]["grafana"]["ports"]:
        assert published.startswith("127.0.0.1:"), published


def interpolated(text: str) -> str:
    """``text`` with each ``${NAME:-default}`` of Compose's interpolation replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_compose_file_works_with_compose_v1_and_v2():
    spec = compose()
    assert "name" not in spec and "version" not in spec  # v1 refuses `name:`; v2 warns about `version:`
    assert "COMPOSE_PROJECT_NAME=smtp-gateway\n" in (DEPLOY / ".env").read_text()
    published = {
        name: [interpolated(port) for port in service.get("ports", [])] for name, service in spec["services"].items()
    }
    assert published == {
        "gateway": ["25:25"],
        "submission": ["465:465", "587:587"],
        "clamav": [],
        "rspamd": [],
        "prometheus": ["127.0.0.1:9090:9090"],
        "grafana": ["127.0.0.1:3000:3000"],
    }


def test_compose_seed_environment_translates_without_refusal(tmp_path):
    spec = compose()
    environment = {k: str(v) for k, v in spec["services"]["gateway"]["environment"].items()}
    config, _ = seed_env.translate(environment, root=tmp_path, listen=environment["GATEWAY_LISTEN"])
    assert config["metrics_listen"] == "0.0.0.0:9464"
    assert [listener["address"] for listener in config["listener"]] == ["0.0.0.0:25"]
    services = set(spec["services"])
    assert config["antivirus"]["clamd"].split(":")[1] in services
    assert urllib.parse.urlsplit(config["rspamd"]["url"]).hostname in services
    assert config["state_dir"] == "/var/lib/gateway"


def test_compose_submission_config_is_a_valid_gateway_config_with_auth_on_465_and_587():
    from gateway.auth import AuthSettings
    from gateway.dkim.settings import DkimSettings
    from policies import REGISTRY

    submission = compose()["services"]["submission"]
    mounts = dict(v.split(":")[:2] for v in submission["volumes"])
    assert mounts["./submission/gateway.toml"] == "/etc/gateway/gateway.toml"
    raw = tomllib.loads((DEPLOY / "submission" / "gateway.toml").read_text())
    config = build(raw)
    assert {(listener.port, listener.auth) for listener in config.listeners} == {(587, "required"), (465, "required")}
    settings = AuthSettings.from_config(config)
    assert settings is not None and settings.tls_only
    assert settings.passwd_file is not None and settings.passwd_file.parent == Path("/var/lib/gateway")
    assert Path("/var/lib/gateway") == config.state_dir and "/var/lib/gateway" in mounts.values()
    for name in raw["pipeline"]["outbound"]:
        REGISTRY[name](config)
    assert raw["antivirus"]["clamd"].split(":")[1] in compose()["services"]
    assert config.metrics_listen == ("0.0.0.0", 9464)
    assert DkimSettings.from_config(config).enabled


def test_prometheus_scrapes_the_gateway_service():
    spec = load_yaml(DEPLOY / "prometheus.yml")[0]
    targets = [t for job in spec["scrape_configs"] for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["gateway:9464", "submission:9464"]
    assert {target.split(":")[0] for target in targets} <= set(compose()["services"])
    assert compose()["services"]["prometheus"]["volumes"][0].startswith(
        "./prometheus.yml:/etc/prometheus/prometheus.yml"
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_prometheus_config():
    checked = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard():
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/smtp-gateway.yml")[0]["providers"][0]
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert Path(mounts["./grafana/dashboard.json"]).parent.as_posix() == provider["options"]["path"]


# ---- systemd ----

UNIT = DEPLOY / "systemd" / "gateway.service"


def unit_settings() -> dict[str, dict[str, list[str]]]:
    """Sections → key → values (systemd allows repeated keys, so configparser's strict mode does not fit)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_keys():
    service = unit_settings()["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "exec" and one["User"] == "gateway"
    assert one["ExecStart"] == "/usr/local/bin/gateway --config /etc/gateway/gateway.toml run"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["KillSignal"] == "SIGTERM" and int(one["TimeoutStopSec"]) > SHUTDOWN_TIMEOUT
    assert one["StateDirectory"] == "gateway" and one["ReadWritePaths"] == "/var/lib/gateway"
    assert one["CapabilityBoundingSet"] == one["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert one["NoNewPrivileges"] == one["PrivateTmp"] == "yes"
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes"
    assert "AF_INET" in one["RestrictAddressFamilies"].split()
    assert "@system-service" in service["SystemCallFilter"]
    assert unit_settings()["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # verify checks that ExecStart= exists: point it at this checkout's gateway script.
    gateway = Path(sys.executable).with_name("gateway")
    assert gateway.exists()
    unit = tmp_path / "gateway.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/gateway", str(gateway)))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert verified.returncode == 0 and "gateway.service" not in verified.stderr, verified.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


# ---- Dockerfile and entrypoint ----


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def test_dockerfile_runs_as_a_non_root_user_with_healthcheck_and_volumes():
    instructions = dockerfile_instructions()
    names = [name for name, _ in instructions]
    # the base is a build argument (tests/container builds on a debootstrap base), the official image by default
    assert instructions[:2] == [("ARG", "BASE_IMAGE=python:3.11-slim"), ("FROM", "${BASE_IMAGE}")]
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert int(users[-1].split(":")[0]) == GATEWAY_UID
    run = " ".join(args for name, args in instructions if name == "RUN")
    assert f"--uid {GATEWAY_UID}" in run and f"--gid {GATEWAY_UID}" in run
    assert "pip install -c requirements.lock ." in run  # the versions the tests passed with (make lock)
    assert names.index("USER") < names.index("ENTRYPOINT")
    (healthcheck,) = [args for name, args in instructions if name == "HEALTHCHECK"]
    command = healthcheck.split("CMD", 1)[1].split()
    assert command[0] == "gateway" and command[-1] == "health"
    assert "--config" in command and command[command.index("--config") + 1] == "/etc/gateway/gateway.toml"
    (volume,) = [args for name, args in instructions if name == "VOLUME"]
    assert json.loads(volume) == ["/var/lib/gateway", "/etc/gateway"]
    (expose,) = [args for name, args in instructions if name == "EXPOSE"]
    assert expose.split() == ["25", "465", "587", "9464"]
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    (entrypoint,) = [json.loads(args) for name, args in instructions if name == "ENTRYPOINT"]
    assert entrypoint == ["docker-entrypoint.sh"]


def test_dockerfile_builds_with_the_legacy_builder_too():
    """Debian's docker.io builds with the legacy builder (DOCKER_BUILDKIT=0), which knows no `# syntax=`
    line and no `COPY --chmod`, and reads only the context's .dockerignore (tests/container builds it so)."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert not re.match(r"#\s*syntax\s*=", text)
    for name, args in dockerfile_instructions():
        if name in ("COPY", "ADD"):
            assert all(not option.startswith(("--chmod", "--link", "--parents")) for option in args.split()), args
    assert not (DEPLOY / "Dockerfile.dockerignore").exists(), "BuildKit would prefer it to the root .dockerignore"
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*"  # everything out, then only what the image needs back in


def test_dockerfile_copies_only_what_exists_and_the_ignore_file_keeps():
    ignore = (ROOT / ".dockerignore").read_text().split()
    for name, args in dockerfile_instructions():
        if name == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert f"!{source}" in ignore, source


def test_entrypoint_script_syntax():
    for shell in ("sh", "bash"):
        if shutil.which(shell):
            checked = subprocess.run(
                [shell, "-n", str(DEPLOY / "docker-entrypoint.sh")], capture_output=True, text=True, check=False
            )
            assert checked.returncode == 0, checked.stderr


def _entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the real entrypoint with its config path moved into tmp_path (no /etc/gateway here)."""
    config = tmp_path / "etc" / "gateway.toml"
    script = tmp_path / "docker-entrypoint.sh"
    script.write_text(
        (DEPLOY / "docker-entrypoint.sh").read_text().replace("CONFIG=/etc/gateway/gateway.toml", f"CONFIG={config}")
    )
    bin_dir = str(Path(sys.executable).parent)
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **env}
    done = subprocess.run(
        ["sh", str(script), *args], capture_output=True, text=True, env=environ, timeout=60, cwd=tmp_path, check=False
    )
    return done, config


def test_entrypoint_generates_the_config_from_the_image_variables(tmp_path):
    env = {
        "MAIL_FQDN": "mx.example.com",
        "RELAYHOST": "[smtp.example.com]:587",
        "DISABLE_AMAVIS": "1",
        "POSTFIX_RELAY_DOMAINS": "example.com",
    }
    done, config = _entrypoint(tmp_path, env, "check-config")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generating it from the environment" in done.stderr
    assert "myhostname = mx.example.com" in done.stdout and "relayhost = [smtp.example.com]:587" in done.stdout
    assert config.read_text().startswith("# Generated by")
    config.write_text(config.read_text().replace("mx.example.com", "kept.example.com"))
    again, _ = _entrypoint(tmp_path, env, "check-config")  # an existing config is left alone
    assert again.returncode == 0 and "myhostname = kept.example.com" in again.stdout
    assert "generating" not in again.stderr


def test_entrypoint_stops_with_exit_2_on_a_refused_variable(tmp_path):
    done, config = _entrypoint(
        tmp_path, {"MAIL_FQDN": "mx.example.com", "DISABLE_AMAVIS": "1", "POSTFIX_MYDESTINATION": "example.com"}, "run"
    )
    assert done.returncode == 2 and "refused POSTFIX_MYDESTINATION" in done.stderr
    assert not config.exists()


def test_entrypoint_runs_other_commands_as_given(tmp_path):
    done, config = _entrypoint(tmp_path, {}, "echo", "hello")
    assert done.returncode == 0 and done.stdout == "hello\n" and not config.exists()


# ---- Grafana dashboard ----

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expression)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        following = text[match.end() :].lstrip()[:1]
        if following != "(" and match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def template_metric_names() -> set[str]:
    names = set()
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = re.match(r"label_values\(\s*([A-Za-z_:][\w:]*)", query)
        if match:
            names.add(match.group(1))
    return names


def test_metric_name_extraction():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, scanner) (rate(a_bucket{x="y(", z=~"$v"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / sum(b) and on(instance) c - time() > 1e3") == {"a_total", "b", "c"}


def test_dashboard_structure():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 39 and board["uid"] == "smtp-gateway" and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"]), panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"


def test_dashboard_covers_what_an_operator_needs():
    expressions = "\n".join(dashboard_expressions())
    for needed in (
        "rate(gateway_messages_received_total",
        "gateway_messages_rejected_total",
        "sum by (state) (gateway_queue_messages",
        "gateway_queue_oldest_message_age_seconds",
        "gateway_delivery_attempt_duration_seconds_bucket",
        "gateway_recipients_total",
        "gateway_scan_duration_seconds_bucket",
        "gateway_scanner_up",
        "gateway_tls_certificate_expiry_timestamp_seconds{",
        "- time()",
    ):
        assert needed in expressions, needed
    assert "histogram_quantile(" in expressions


def exposed_families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def sample_names(families: dict[str, str]) -> set[str]:
    """Names a query may use for each family in the text exposition (TYPE lines list every registered one)."""
    names = set()
    for family, kind in families.items():
        if kind == "counter":
            base = family.removesuffix("_total")
            names |= {base + "_total", base + "_created"}
        elif kind in ("histogram", "summary"):
            names |= {family + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
            if kind == "summary":
                names.add(family)
        else:
            names.add(family)
    return names


def test_every_dashboard_metric_exists_in_a_running_gateway(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port)) as gateway:
        status, text = metrics_after_one_delivery(gateway, sink, "deploy")
    assert status == 200
    available = sample_names(exposed_families(text))
    used: set[str] = set()
    for expression in dashboard_expressions():
        names = metric_names(expression)
        assert names, expression
        missing = names - available
        assert not missing, f"{sorted(missing)} in {expression!r} are not exposed by the gateway"
        used |= names
    assert template_metric_names() <= available
    assert len(used) >= 15, sorted(used)


def _grafana_to_promql(expression: str) -> str:
    return expression.replace("$__rate_interval", "1m").replace('"$job"', '".*"').replace('"$instance"', '".*"')


@pytest.mark.skipif(not prometheus_harness.available(), reason="the Debian prometheus package is missing")
def test_every_dashboard_expression_parses_in_prometheus():
    with prometheus_harness.PrometheusServer("127.0.0.1:9") as server:
        for expression in dashboard_expressions():
            query = _grafana_to_promql(expression)
            url = f"{server.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            status, body = http_get(url)
            assert status == 200 and json.loads(body)["status"] == "success", (query, body)


def test_network_policy_keeps_the_metrics_port_for_prometheus_and_smtp_open():
    policy = find("NetworkPolicy")
    labels = find("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert selected(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    container_ports = {p["name"] for p in find("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["ports"]}
    open_rules = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert [{p["port"] for p in rule["ports"]} for rule in open_rules] == [{"smtp", "smtps", "submission"}]
    metrics_rules = [rule for rule in policy["spec"]["ingress"] if any(p["port"] == "metrics" for p in rule["ports"])]
    assert len(metrics_rules) == 1 and metrics_rules[0]["from"]  # only from the listed peers
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= container_ports
