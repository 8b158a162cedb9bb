"""Trusted client networks: ``mynetworks`` and the host's own interface networks."""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from gateway.config import Network


def interface_networks() -> tuple[Network, ...]:
    """Networks of this host's interfaces (``auto_trust_networks``), via psutil.

    Containers on the same docker network as the gateway are then trusted, like
    the ServerContainers image's AUTO_TRUST_NETWORKS. Link-local IPv6 is skipped.
    """
    import psutil

    result: list[Network] = []
    for addresses in psutil.net_if_addrs().values():
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
            result.append(network)
    return tuple(result)


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
