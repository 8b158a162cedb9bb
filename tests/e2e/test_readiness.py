"""Readiness that means something (issue 15, item 5): ``/readyz`` follows a real clamd, and a balancer that
asks it sends mail only to the replicas that can scan.

A gateway whose clamd (``on_error = "tempfail"``) stops is not ready (503, naming
the scanner) while ``/healthz``, liveness, stays 200; ready again when clamd is
back; a scanner that may fail open never makes it unready; a supervisor pings
the scanners its workers use. Then two replicas, each with its own real clamd (``on_error = "tempfail"``), behind a
real haproxy (TCP mode, ``send-proxy-v2``) whose health check is ``GET /readyz``
on each replica's metrics port. With replica b's clamd stopped, haproxy marks b
DOWN and every session it passes on lands on a, which accepts the mail; b alone
would have answered 451 to each. With the clamd back, b is UP again and takes
its share. (A draining replica's ``/readyz`` 503 is shown in test_drain.py.)
"""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.harness.clamd import ClamdDaemon
from tests.harness.haproxy import HaproxyServer
from tests.harness.helpers import http_get, relay_config
from tests.harness.ports import free_port

CLIENT = "127.0.0.6"
RECEIVED_BY = re.compile(rb"by gw-(\w)\.test")


def scanning(clamd: str, on_error: str) -> str:
    """Config tables: both directions scanned by the clamd at ``clamd`` with ``on_error``."""
    return (
        f'[antivirus]\nclamd = "{clamd}"\non_error = "{on_error}"\n'
        '[pipeline]\ninbound = ["antivirus"]\noutbound = ["antivirus"]\n'
    )


def test_readyz_follows_a_fail_closed_scanner_and_healthz_stays_liveness(gateway_factory, sink):
    with ClamdDaemon() as clamd:
        # a fixed metrics port: `gateway health` asks the running gateway's /readyz there
        config = relay_config(
            sink.port, f'metrics_listen = "127.0.0.1:{free_port()}"\n' + scanning(clamd.tcp_address, "tempfail")
        )
        with gateway_factory(config) as gateway:
            status, text = http_get(gateway.metrics_url + "/readyz")
            assert status == 200 and f"ok   scanner:antivirus: {clamd.tcp_address} answers" in text, text
            clamd.stop()
            status, text = http_get(gateway.metrics_url + "/readyz")
            assert status == 503 and f"FAIL scanner:antivirus: {clamd.tcp_address} does not answer" in text, text
            assert http_get(gateway.metrics_url + "/healthz")[0] == 200  # liveness: a restart would not help
            health = gateway.cli("health", check=False)
            assert health.returncode == 1 and "FAIL scanner:antivirus" in health.stdout, health.stdout
            clamd.start()
            status, text = http_get(gateway.metrics_url + "/readyz")
            assert status == 200, text
            assert gateway.cli("health", check=False).returncode == 0


def test_a_scanner_that_may_fail_open_does_not_make_the_gateway_unready(gateway_factory, sink):
    with ClamdDaemon() as clamd:
        config = relay_config(sink.port, scanning(clamd.tcp_address, "pass"))
        with gateway_factory(config) as gateway:
            clamd.stop()
            status, text = http_get(gateway.metrics_url + "/readyz")
            assert status == 200 and "scanner:" not in text, text


def test_readyz_of_a_supervisor_pings_the_scanners_its_workers_use(gateway_factory, sink):
    with ClamdDaemon() as clamd:
        config = relay_config(sink.port, "workers = 2\n" + scanning(clamd.unix_address, "tempfail"))
        with gateway_factory(config) as gateway:
            status, text = http_get(gateway.metrics_url + "/readyz")
            assert status == 200 and f"ok   scanner:antivirus: {clamd.unix_address} answers" in text, text
            clamd.stop()
            status, text = http_get(gateway.metrics_url + "/readyz")
            assert status == 503 and "FAIL scanner:antivirus" in text, text


@pytest.fixture
def clamds():
    with ClamdDaemon() as first, ClamdDaemon() as second:
        yield {"a": first, "b": second}


def replicas(gateway_factory, sink, clamds):
    made = {}
    for name, clamd in clamds.items():
        port, metrics = free_port(), free_port()
        config = relay_config(
            sink.port,
            f'metrics_listen = "127.0.0.1:{metrics}"\n'
            'upstream_proxy_networks = ["127.0.0.1/32"]\n' + scanning(clamd.tcp_address, "tempfail"),
            myhostname=f'"gw-{name}.test"',
        )
        config += (
            f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\ntls = "none"\n'
            'upstream_proxy_protocol = "haproxy"\n'
        )
        gateway = gateway_factory(config, name=name)
        gateway.port, gateway.metrics_port = port, metrics
        made[name] = gateway
    return made


def send_through(balancer: HaproxyServer, count: int) -> None:
    """``count`` sessions through the balancer from CLIENT, each accepted (250)."""
    for number in range(count):
        with smtplib.SMTP("127.0.0.1", balancer.ports["smtp"], source_address=(CLIENT, 0), timeout=30) as client:
            assert (
                client.sendmail(
                    "someone@example.net", ["user@example.net"], f"Subject: {number}\r\n\r\nclean\r\n".encode()
                )
                == {}
            )


def replicas_reached(sink) -> set[bytes]:
    """The replicas (``a``, ``b``) whose ``Received:`` field the messages at the sink carry."""
    return {RECEIVED_BY.search(message.data).group(1) for message in sink.messages}


def test_haproxy_checking_readyz_sends_mail_only_to_replicas_whose_scanner_answers(gateway_factory, sink, clamds):
    gateways = replicas(gateway_factory, sink, clamds)
    with gateways["a"], gateways["b"]:
        servers = [("127.0.0.1", gateways[name].port, gateways[name].metrics_port) for name in ("a", "b")]
        with HaproxyServer(
            {"smtp": (servers, "send-proxy-v2")}, health_check="httpchk GET /readyz", check_interval=0.2
        ) as balancer:
            balancer.wait_for_states("smtp", {"s0": "UP", "s1": "UP"})
            clamds["b"].stop()
            balancer.wait_for_states("smtp", {"s0": "UP", "s1": "DOWN"})
            send_through(balancer, 6)  # each accepted: none reached b, whose scans would fail
            sink.wait_for_messages(6, timeout=30)
            assert replicas_reached(sink) == {b"a"}
            clamds["b"].start()
            balancer.wait_for_states("smtp", {"s0": "UP", "s1": "UP"})
            sink.reset()
            send_through(balancer, 6)
            sink.wait_for_messages(6, timeout=30)
            assert replicas_reached(sink) == {b"a", b"b"}
