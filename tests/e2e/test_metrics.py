"""Metrics and health: a real Prometheus scrapes the gateway; /readyz turns 503 when it must, /healthz is liveness."""

from __future__ import annotations

import os
import re
import smtplib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme

from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import http_get, metrics_after_one_delivery, relay_config
from tests.harness.ports import free_port
from tests.harness.prometheus import PrometheusServer, available
from tests.harness.smtp_sink import SmtpSink

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboard.json"


def test_prometheus_counts_match_what_happened(gateway_factory):
    assert available(), "the Debian prometheus package is missing: run `make test`, which installs it"
    with SmtpSink() as sink:
        sink.rcpt_replies["later@elsewhere.org"] = ["451 4.2.0 busy"] * 100
        gateway = gateway_factory(relay_config(sink.port, minimal_backoff_time='"1h"', maximal_backoff_time='"2h"'))
        with gateway:
            target = gateway.metrics_url.removeprefix("http://")
            with PrometheusServer(target) as prometheus:
                with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
                    for index in range(4):  # delivered
                        client.sendmail("a@example.com", [f"ok{index}@elsewhere.org"], b"Subject: ok\r\n\r\nx\r\n")
                    client.sendmail("a@example.com", ["later@elsewhere.org"], b"Subject: d\r\n\r\nx\r\n")  # deferred
                for _ in range(3):  # rejected: relay denied from an untrusted address
                    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=("127.0.0.2", 0), timeout=10) as c:
                        c.ehlo("outsider.test")
                        c.mail("x@example.com")
                        assert c.rcpt("y@elsewhere.org")[0] == 554
                sink.wait_for_messages(4)
                gateway.wait_for_log(r"deferred, 1 recipient\(s\) left")
                prometheus.wait_for('sum(gateway_messages_received_total{result="incoming"})', 5)
                prometheus.wait_for(
                    'sum(gateway_messages_rejected_total{stage="rcpt",reason="relay_denied",reply_class="5xx"})', 3
                )
                prometheus.wait_for('sum(gateway_recipients_total{status="delivered"})', 4)
                prometheus.wait_for('sum(gateway_recipients_total{status="deferred"})', 1)
                prometheus.wait_for('gateway_queue_messages{state="deferred"}', 1)
                prometheus.wait_for("sum(gateway_queue_messages)", 1)
                assert prometheus.value("gateway_queue_oldest_message_age_seconds") > 0
                assert prometheus.value("gateway_spool_bytes") > 0
                assert prometheus.value("sum(gateway_smtp_connections_total)") == 4
                assert prometheus.value("gateway_tls_certificate_expiry_timestamp_seconds") > 0
                assert prometheus.value("process_resident_memory_bytes") > 0


def test_metric_names_and_labels_follow_the_conventions(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port)) as gateway:
        status, text = metrics_after_one_delivery(gateway, sink, "m")
    assert status == 200
    families = dict(re.findall(r"^# TYPE (gateway_\S+) (\S+)$", text, re.M))
    assert len(families) >= 15, families
    assert (
        families["gateway_recipients_total" if "gateway_recipients_total" in families else "gateway_recipients"]
        == "counter"
    )
    for name, kind in families.items():
        if kind == "counter":
            base = name.removesuffix("_total")
            suffixes = set(re.findall(rf"^{base}(\w*)[{{ ]", text, re.M))
            assert suffixes <= {"_total", "_created"}, (name, suffixes)
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert "_milliseconds" not in name and not name.endswith("_ms"), name
    samples = re.findall(r"^(gateway_\w+)\{([^}]*)\}", text, re.M)
    for _, labels in samples:
        for value in re.findall(r'="([^"]*)"', labels):
            assert "@" not in value and not re.fullmatch(r"[0-9A-F]{19}", value), labels
    assert 'gateway_recipients_total{nexthop="[127.0.0.1]:' in text


def test_readyz_reports_each_check(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port)) as gateway:
        status, text = http_get(gateway.metrics_url + "/readyz")
        assert status == 200, text
        assert "ok   listener:smtp" in text and "ok   spool" in text and "ok   certificate" in text
        status, text = http_get(gateway.metrics_url + "/healthz")
        assert status == 200 and text.startswith("ok   listener:smtp") and "spool" not in text, text
        spool_tmp = gateway.state_dir / "spool" / "tmp"
        os.chmod(spool_tmp, 0o500)
        try:
            if os.access(spool_tmp, os.W_OK):  # root ignores modes: make it unwritable another way
                os.chmod(spool_tmp, 0o700)
                spool_tmp.rename(spool_tmp.with_name("tmp.away"))
                spool_tmp.write_bytes(b"")  # a file where the directory was: creating inside fails
            status, text = http_get(gateway.metrics_url + "/readyz")
            assert status == 503 and "FAIL spool" in text, text
            assert http_get(gateway.metrics_url + "/healthz")[0] == 200  # liveness: a restart would not help
        finally:
            if spool_tmp.is_file():
                spool_tmp.unlink()
                spool_tmp.with_name("tmp.away").rename(spool_tmp)
            os.chmod(spool_tmp, 0o700)
        assert http_get(gateway.metrics_url + "/readyz")[0] == 200


def test_readyz_fails_when_the_certificate_expires_within_3_days(gateway_factory, sink, tmp_path):
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", not_after=datetime.now(UTC) + timedelta(days=2))
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    config = relay_config(sink.port, f'smtpd_tls_cert_file = "{cert}"\nsmtpd_tls_key_file = "{key}"\n')
    with gateway_factory(config) as gateway:
        status, text = http_get(gateway.metrics_url + "/readyz")
        assert http_get(gateway.metrics_url + "/healthz")[0] == 200  # liveness: a restart would not renew it
    assert status == 503 and "FAIL certificate" in text and "in 2.0 days" in text, text


def test_gateway_health_command(gateway_factory, sink):
    gateway = gateway_factory(relay_config(sink.port))
    with gateway:
        ok = gateway.cli("health", check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "ok   listener:smtp" in ok.stdout
    down = gateway.cli("health", check=False)
    assert down.returncode == 1 and "FAIL listener:smtp" in down.stdout


def test_gateway_health_is_not_ready_while_readyz_does_not_answer(tmp_path, sink):
    # The SMTP listener's address accepts connections (the sink listens there) but nothing serves
    # metrics_listen: the moment a starting gateway's workers listen before its /readyz does, when its
    # scanners have not been asked yet. The container HEALTHCHECK must not pass then.
    config = relay_config(
        sink.port,
        f'metrics_listen = "127.0.0.1:{free_port()}"\n[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{sink.port}"\n',
    )
    health = GatewayProcess(tmp_path, config).cli("health", check=False)
    assert health.returncode == 1, health.stdout + health.stderr
    assert "FAIL readyz: 127.0.0.1:" in health.stdout and "ok   listener:smtp" in health.stdout, health.stdout
