"""auto_trust_networks on real interfaces, in a network namespace of the test's own (iproute2 dummy links).

Issue 18: an interface with a /0 address made the whole internet trusted, and
interfaces that were down (docker0 with no container) were trusted too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.harness.gateway_process import GatewayProcess
from tests.harness.ports import free_port

RESCAN_SECONDS = 6.0  # auto_trust_rescan_interval here: the first checks come well within it after a reading

# veth pairs with both ends in the namespace (this kernel has no dummy links).
SETUP = [
    "link set lo up",
    "link add up0 type veth peer name up0p",
    "addr add 10.97.0.1/24 dev up0",
    "link set up0p up",
    "link set up0 up",
    "link add down0 type veth peer name down0p",
    "addr add 10.96.0.1/24 dev down0",  # left down
    "link add wide0 type veth peer name wide0p",
    "addr add 10.98.0.1/0 dev wide0",
    "addr add fd98::1/32 dev wide0",
    "link set wide0p up",
    "link set wide0 up",
]


@pytest.fixture
def namespace():
    name = f"gwtrust{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        for command in SETUP:
            subprocess.run(["ip", "-n", name, *command.split()], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def _rcpt_reply(namespace: str, source: str, port: int) -> int:
    """The RCPT reply code for a recipient outside relay_domains, from ``source`` inside the namespace."""
    script = textwrap.dedent(f"""
        import smtplib
        with smtplib.SMTP("10.97.0.1", {port}, source_address=("{source}", 0), timeout=10) as client:
            client.ehlo("client.test")
            client.mail("a@example.com")
            print(client.rcpt("b@elsewhere.org")[0])
    """)
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout.strip())


def gateway_in(namespace: str, tmp_path, port: int) -> GatewayProcess:
    """A gateway inside ``namespace`` with auto_trust_networks and nothing else trusted.

    workers = 1: the networks are logged once per process, and the tests read those lines.
    """
    return GatewayProcess(
        tmp_path / "gw",
        "auto_trust_networks = true\nmynetworks = []\nworkers = 1\n"
        f'auto_trust_rescan_interval = "{RESCAN_SECONDS:g}s"\n'
        'relayhost = ["[127.0.0.1]:9"]\n'
        f'[[listener]]\nname = "smtp"\naddress = "0.0.0.0:{port}"\ntls = "none"\n',
        wrapper=["ip", "netns", "exec", namespace],
    )


def test_only_interfaces_that_are_up_and_not_too_wide_are_trusted(namespace, tmp_path):
    port = free_port()
    with gateway_in(namespace, tmp_path, port) as gateway:
        (trusted,) = gateway.wait_for_log(r"auto_trust_networks: trusting the networks of the interfaces that are up")
        assert "up0 10.97.0.0/24" in trusted and "lo 127.0.0.0/8" in trusted
        assert "down0" not in trusted and "10.96." not in trusted  # down: not trusted
        assert "wide0" not in trusted and "0.0.0.0/0" not in trusted
        gateway.wait_for_log(r"not trusting 0\.0\.0\.0/0 of interface wide0: a prefix shorter than /16")
        gateway.wait_for_log(r"not trusting fd98::/32 of interface wide0: a prefix shorter than /48")
        assert _rcpt_reply(namespace, "10.97.0.1", port) == 250  # a neighbour on up0 relays
        assert _rcpt_reply(namespace, "10.98.0.1", port) == 554  # the /0 interface's own address does not


def test_a_network_attached_after_start_is_trusted_after_sighup_and_after_the_rescan(namespace, tmp_path):
    """A docker network attached to a running container: trusted without a restart (issue 14, item 7)."""
    port = free_port()
    with gateway_in(namespace, tmp_path, port) as gateway:
        gateway.wait_for_log(r"auto_trust_networks: trusting the networks of the interfaces that are up")
        for command in (
            "link add late0 type veth peer name late0p",
            "addr add 10.95.0.1/24 dev late0",
            "link set late0p up",
            "link set late0 up",
        ):
            subprocess.run(["ip", "-n", namespace, *command.split()], check=True, timeout=30)
        assert _rcpt_reply(namespace, "10.95.0.1", port) == 554  # not read again yet
        gateway.process.send_signal(signal.SIGHUP)
        gateway.wait_for_log(r"reload done")
        (after_reload,) = gateway.wait_for_log(r"trusting the networks of the interfaces that are up: .*late0", 10)
        assert "late0 10.95.0.0/24" in after_reload
        assert _rcpt_reply(namespace, "10.95.0.1", port) == 250
        # and without a signal: the interfaces are read again at the first connection auto_trust_rescan_interval
        # (RESCAN_SECONDS here) after the last reading
        for command in (
            "link add later0 type veth peer name later0p",
            "addr add 10.94.0.1/24 dev later0",
            "link set later0p up",
            "link set later0 up",
        ):
            subprocess.run(["ip", "-n", namespace, *command.split()], check=True, timeout=30)
        time.sleep(RESCAN_SECONDS + 1)
        assert _rcpt_reply(namespace, "10.94.0.1", port) == 250
        gateway.wait_for_log(r"trusting the networks of the interfaces that are up: .*later0 10\.94\.0\.0/24")
