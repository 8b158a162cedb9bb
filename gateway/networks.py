"""Trusted client networks: ``mynetworks`` and the host's own interface networks."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.values import Network

# A shorter prefix on an interface is a misconfiguration (or a trick), not a neighbourhood to trust.
MIN_TRUSTED_PREFIX = {4: 16, 6: 48}


@dataclass(frozen=True, slots=True)
class InterfaceScan:
    """What ``auto_trust_networks`` found on this host's interfaces.

    Attributes:
        trusted: ``(interface, network)`` of interfaces that are up.
        refused: ``(interface, network)`` with a prefix shorter than
            :data:`MIN_TRUSTED_PREFIX` (/16 for IPv4, /48 for IPv6), never trusted.
    """

    trusted: tuple[tuple[str, Network], ...]
    refused: tuple[tuple[str, Network], ...]

    def describe(self) -> str:
        """``"docker0 172.17.0.0/16, lo 127.0.0.0/8"`` (or ``"none"``)."""
        return ", ".join(f"{name} {network}" for name, network in self.trusted) or "none"


def scan_interfaces() -> InterfaceScan:
    """Networks of this host's interfaces that are up (``auto_trust_networks``), via psutil.

    Containers on the same docker network as the gateway are then trusted, like
    the ServerContainers image's AUTO_TRUST_NETWORKS. Skipped: interfaces that
    are down (a docker0 with no container keeps its address), link-local IPv6,
    and, as ``refused``, prefixes shorter than /16 (IPv4) or /48 (IPv6) but
    loopback's 127.0.0.0/8: an interface with a /0 address would otherwise make
    the whole internet trusted.
    """
    import psutil

    stats = psutil.net_if_stats()
    trusted: list[tuple[str, Network]] = []
    refused: list[tuple[str, Network]] = []
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        if name not in stats or not stats[name].isup:
            continue
        for address in addresses:
            if address.family not in (socket.AF_INET, socket.AF_INET6) or not address.netmask:
                continue
            host = address.address.split("%", 1)[0]
            try:
                # psutil gives IPv6 masks as "ffff:ffff::", which ip_network() does not take: count the bits
                prefix = bin(int(ipaddress.ip_address(address.netmask))).count("1")
                network = ipaddress.ip_network(f"{host}/{prefix}", strict=False)
            except ValueError:
                continue
            if network.is_link_local:
                continue
            wide = network.prefixlen < MIN_TRUSTED_PREFIX[network.version] and not network.is_loopback
            target = refused if wide else trusted
            if (name, network) not in target:
                target.append((name, network))
    return InterfaceScan(tuple(trusted), tuple(refused))


def interface_networks() -> tuple[Network, ...]:
    """The trusted networks of :func:`scan_interfaces`."""
    return tuple(network for _, network in scan_interfaces().trusted)


class NetworkSet:
    """A set of networks with membership for an address (IPv4-mapped IPv6 is unmapped)."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def __contains__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return self.match(address) is not None

    def match(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Network | None:
        """The first network (in the order given) that holds ``address``, or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return next((net for net in self.networks if address.version == net.version and address in net), None)
