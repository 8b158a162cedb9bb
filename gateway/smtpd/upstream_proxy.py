"""The PROXY protocol (haproxy's, v1 and v2) on a listener behind a load balancer.

With ``upstream_proxy_protocol = "haproxy"`` on a listener (Postfix's
``smtpd_upstream_proxy_protocol``), every connection must start with a PROXY
header, and only from an address in ``upstream_proxy_networks``: the client it
names is the one used everywhere (relay access and ``mynetworks``, rate and
connection limits, SPF, rspamd, the log, the ``Received:`` field). A header
from anywhere else, a missing or malformed one, or none within
``smtpd_upstream_proxy_timeout`` (5s) closes the connection without a word, as
Postfix does. A ``LOCAL`` (v2) or ``UNKNOWN`` (v1) header, which haproxy's
health checks send, keeps the balancer's own address.

aiosmtpd's parser (``aiosmtpd.proxy_protocol.get_proxy``) reads the header; the
result is kept on the protocol object, so it survives STARTTLS (aiosmtpd makes a
new session object there).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from aiosmtpd.proxy_protocol import get_proxy

from gateway.networks import NetworkSet

log = logging.getLogger("gateway.smtpd")


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    """Who may send PROXY headers to a listener, and how long a header may take (seconds)."""

    networks: NetworkSet
    timeout: float = 5.0


async def proxied_peer(reader: asyncio.StreamReader, peer: tuple[str, int], proxy: UpstreamProxy,
                       listener: str) -> tuple[str, int] | None:
    """The client a PROXY header names, ``peer`` itself for LOCAL/UNKNOWN, or None to close the connection.

    Args:
        reader: the connection's stream (the header is read from it, nothing more).
        peer: the connection's own ``(address, port)`` (the balancer's).
        proxy: the listener's settings.
        listener: its name, for the log.
    """
    address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    if address not in proxy.networks:
        log.warning("PROXY refused from unknown[%s]:%d listener=%s: not in upstream_proxy_networks",
                    address, peer[1], listener)
        return None
    try:
        data = await asyncio.wait_for(get_proxy(reader), proxy.timeout)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        log.warning("PROXY header missing from unknown[%s]:%d listener=%s (no header within %gs)",
                    address, peer[1], listener, proxy.timeout)
        return None
    if not data.valid:
        log.warning("PROXY header refused from unknown[%s]:%d listener=%s: %s", address, peer[1], listener,
                    data.error or "malformed")
        return None
    if data.src_addr is None or not isinstance(data.src_addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return peer  # LOCAL / UNKNOWN: the balancer speaks for itself (health checks)
    return str(data.src_addr), int(data.src_port or 0)
