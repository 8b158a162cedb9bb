"""The scanners' readiness probes (``/readyz``) against the real daemons: spamd, rspamd, clamd.

Each policy with ``on_error = "tempfail"`` gives a ping (spamd ``PING``, rspamd
``/ping``, clamd ``zPING``) that :func:`gateway.ops.readiness.probe_scanner` sends;
a daemon that answers is ready, a port nobody listens on is not.
"""

from __future__ import annotations

import asyncio

from gateway import config as gateway_config
from gateway.ops.readiness import probe_scanner
from policies.antivirus import Antivirus
from policies.spam.rspamd import Rspamd
from policies.spam.spamassassin import SpamAssassin
from tests.harness.clamd import ClamdDaemon
from tests.harness.ports import free_port


def test_spamd_answers_its_ping_and_a_closed_port_does_not(spamd):
    policy = SpamAssassin(gateway_config.build({"spamassassin": {"address": spamd.address}}))
    probe = policy.readiness_probe()
    assert probe is not None
    check = asyncio.run(probe_scanner(probe))
    assert check.ok and check.name == "scanner:spamassassin", check
    closed = SpamAssassin(gateway_config.build({"spamassassin": {"address": f"127.0.0.1:{free_port()}"}}))
    probe = closed.readiness_probe()
    assert probe is not None
    check = asyncio.run(probe_scanner(probe))
    assert not check.ok and "does not answer" in check.detail, check


def test_rspamd_answers_its_ping(rspamd):
    policy = Rspamd(gateway_config.build({"rspamd": {"url": rspamd.url}}))
    probe = policy.readiness_probe()
    assert probe is not None
    check = asyncio.run(probe_scanner(probe))
    assert check.ok and check.detail == f"{rspamd.url} answers", check


def test_clamd_on_its_unix_socket_and_on_tcp():
    with ClamdDaemon() as clamd:
        for address in (clamd.unix_address, clamd.tcp_address):
            policy = Antivirus(gateway_config.build({"antivirus": {"clamd": address}}))
            probe = policy.readiness_probe()
            assert probe is not None
            assert asyncio.run(probe_scanner(probe)).ok, address


def test_a_scanner_that_may_fail_open_has_no_probe():
    for policy in (
        SpamAssassin(gateway_config.build({"spamassassin": {"on_error": "pass"}})),
        Rspamd(gateway_config.build({"rspamd": {"on_error": "pass"}})),
        Antivirus(gateway_config.build({"antivirus": {"on_error": "pass"}})),
    ):
        assert policy.readiness_probe() is None, policy.name
