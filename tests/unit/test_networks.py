"""auto_trust_networks: the networks of this host's own interfaces are trusted."""

from __future__ import annotations

import asyncio
import ipaddress

import psutil

from gateway.config import build
from gateway.envelope import ClientInfo
from gateway.networks import NetworkSet, interface_networks
from gateway.pipeline.policy import PolicyContext
from policies.relay_access import RelayAccess


def _interface_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = []
    up = {name for name, stats in psutil.net_if_stats().items() if stats.isup}
    for name, addresses in psutil.net_if_addrs().items():
        if name not in up:
            continue  # a down interface's networks are not trusted (tests/e2e/test_auto_trust.py)
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address.address.split("%", 1)[0])
            except ValueError:
                continue  # MAC addresses
            if not ip.is_link_local:
                found.append(ip)
    return found


def test_every_address_of_an_interface_that_is_up_is_inside_an_interface_network():
    networks = NetworkSet(interface_networks())
    addresses = _interface_addresses()
    assert ipaddress.ip_address("127.0.0.1") in addresses
    for address in addresses:
        assert address in networks, address


def test_auto_trust_networks_lets_a_neighbour_relay():
    neighbour = ipaddress.ip_address("127.45.6.7")  # in 127.0.0.0/8 of the loopback interface
    off = RelayAccess(build({"mynetworks": []}))
    on = RelayAccess(build({"mynetworks": [], "auto_trust_networks": True}))

    def verdict(policy: RelayAccess) -> str:
        ctx = PolicyContext(client=ClientInfo(address=neighbour, port=1, listener="smtp"))
        asyncio.run(policy.on_connect(ctx))
        return asyncio.run(policy.on_rcpt(ctx, "someone@elsewhere.org")).action.value

    assert verdict(off) == "reject"
    assert verdict(on) == "accept"


def test_networkset_unmaps_ipv4_mapped_ipv6():
    networks = NetworkSet([ipaddress.ip_network("10.0.0.0/8")])
    assert ipaddress.ip_address("::ffff:10.1.2.3") in networks
    assert ipaddress.ip_address("::ffff:11.1.2.3") not in networks
