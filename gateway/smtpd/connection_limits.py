"""Counting open SMTP connections, in all and per client (Postfix ``smtpd_client_connection_count_limit``).

Apart from the protocol so that the supervisor's shared table
(:mod:`gateway.workers.anvil`) builds on it without loading aiosmtpd.
"""

from __future__ import annotations

import ipaddress


def client_key(host: str) -> str:
    """The key a client's connections are counted under: its IPv4 address, or its IPv6 /64.

    One IPv6 host usually has a whole /64 to pick source addresses from
    (RFC 4291 §2.5.1; Postfix ``smtpd_client_ipv6_prefix_length``), so counting
    /128s would let it open any number of connections. IPv4-mapped IPv6 is
    counted as the IPv4 address; a scope id is dropped.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ConnectionLimiter:
    """Counts open connections, in all and per client (:func:`client_key`)."""

    def __init__(self, total_limit: int, per_client_limit: int) -> None:
        self.total_limit = total_limit
        self.per_client_limit = per_client_limit
        self.total = 0
        self.per_client: dict[str, int] = {}

    def try_acquire(self, client: str, exempt: bool = False) -> bool:
        """Count a new connection; False (nothing counted) when a limit is reached.

        An ``exempt`` client (``smtpd_client_event_limit_exceptions``) is held to the total only.
        """
        if self.total >= self.total_limit or (not exempt and self.per_client.get(client, 0) >= self.per_client_limit):
            return False
        self.total += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return True

    def release(self, client: str) -> None:
        """Forget one connection of ``client``."""
        self.total -= 1
        left = self.per_client.get(client, 1) - 1
        if left:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)
