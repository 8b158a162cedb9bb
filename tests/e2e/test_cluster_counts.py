"""Limits that hold across replicas: the rate and failed-login counts in a real Redis (Debian redis-server).

Two gateways (two replicas, each its own spool) share ``[cluster] redis_url``.
Shown: a client's connections are counted across both, so the limit is not
doubled; failed logins at one replica throttle the login at the other; and with
Redis stopped the limits fail open (mail keeps flowing), logged and counted in
``gateway_shared_counts_errors_total``, until Redis is back.
"""

from __future__ import annotations

import base64
import re
import smtplib

import pytest
from passlib.hash import bcrypt

from tests.harness.helpers import client_tls, http_get, relay_config
from tests.harness.ports import free_port
from tests.harness.redis_server import RedisServer

OUTSIDER = "127.0.0.3"


@pytest.fixture
def redis():
    with RedisServer() as server:
        yield server


def replicas(gateway_factory, sink, redis, tmp_path):
    """Two gateways (not started) sharing the Redis counts: 3 connections a minute per client, 2 failed logins."""
    passwd = tmp_path / "passwd"
    passwd.write_text(f"alice:{{BLF-CRYPT}}{bcrypt.using(rounds=5).hash('alice-pw')}\n")
    config = relay_config(
        sink.port,
        "smtpd_client_connection_rate_limit = 3\n"
        f'[cluster]\nredis_url = "{redis.url}"\ntimeout = "1s"\n'
        f'[auth]\nbackend = "passwd_file"\npasswd_file = "{passwd}"\nfailure_limit = 2\n',
    )
    made = []
    for name in ("a", "b"):
        port = free_port()
        gateway = gateway_factory(
            config + f'\n[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\n'
            'tls = "starttls"\nauth = "optional"\n',
            name=name,
        )
        gateway.port = port
        made.append(gateway)
    return made


def connects(gateway) -> int:
    """The greeting's code for a new connection from OUTSIDER (smtplib raises on a refusal)."""
    try:
        smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=15).close()
        return 220
    except smtplib.SMTPConnectError as error:
        return error.smtp_code


def test_a_connection_limit_holds_across_replicas_and_fails_open_without_redis(gateway_factory, sink, redis, tmp_path):
    first, second = replicas(gateway_factory, sink, redis, tmp_path)
    with first, second:
        assert [connects(first), connects(second), connects(first)] == [220, 220, 220]
        assert connects(second) == 421  # the fourth within the minute, whichever replica gets it
        redis.stop()
        assert [connects(first) for _ in range(3)] == [220, 220, 220]  # fail open: mail keeps flowing
        first.wait_for_log(r"cluster: the shared counts at redis://127\.0\.0\.1:\d+/0 failed .*limits are off")
        _, text = http_get(first.metrics_url + "/metrics")
        errors = re.search(r"^gateway_shared_counts_errors_total (\S+)$", text, re.M)
        assert errors and float(errors.group(1)) >= 3
        redis.start()  # back (empty): counting again
        assert [connects(second) for _ in range(4)] == [220, 220, 220, 421]


def test_failed_logins_at_one_replica_throttle_the_login_at_the_other(gateway_factory, sink, redis, tmp_path):
    first, second = replicas(gateway_factory, sink, redis, tmp_path)
    with first, second:
        for gateway, password, expected in (
            (first, "wrong-1", 535),
            (first, "wrong-2", 535),
            (second, "alice-pw", 454),
        ):
            with smtplib.SMTP("127.0.0.1", gateway.port, timeout=15) as client:  # 127.0.0.1: not rate limited
                client.starttls(context=client_tls(gateway.ca_file))
                client.ehlo("client.test")
                plain = base64.b64encode(f"\0alice\0{password}".encode()).decode()
                assert client.docmd("AUTH", "PLAIN " + plain)[0] == expected, (gateway.port, password)
