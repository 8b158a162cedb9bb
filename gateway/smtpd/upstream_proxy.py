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

from aiosmtpd.proxy_protocol import V2_SIGNATURE, ProxyData, get_proxy

from gateway.networks import NetworkSet

log = logging.getLogger("gateway.smtpd")
V1_LIMIT = 107  # octets of the longest v1 header, CRLF included (haproxy's proxy-protocol.txt §2.1)


def log_missing(peer: tuple[str, int], listener: str, timeout: float) -> None:
    """Log a connection closed for want of its PROXY header."""
    log.warning(
        "PROXY header missing from unknown[%s]:%d listener=%s (no header within %gs)",
        peer[0],
        peer[1],
        listener,
        timeout,
    )


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    """Who may send PROXY headers to a listener, and how long a header may take (seconds)."""

    networks: NetworkSet
    timeout: float = 5.0


async def proxied_peer(
    reader: asyncio.StreamReader, peer: tuple[str, int], proxy: UpstreamProxy, listener: str
) -> tuple[str, int] | None:
    """The client a PROXY header names, ``peer`` itself for LOCAL/UNKNOWN, or None to close the connection.

    Args:
        reader: the connection's stream (the header is read from it, nothing more).
        peer: the connection's own ``(address, port)`` (the balancer's).
        proxy: the listener's settings.
        listener: its name, for the log.
    """
    if not from_a_balancer(peer, proxy, listener):
        return None
    try:
        data = await asyncio.wait_for(get_proxy(reader), proxy.timeout)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        log_missing(peer, listener, proxy.timeout)
        return None
    return named_client(data, peer, listener)


def from_a_balancer(peer: tuple[str, int], proxy: UpstreamProxy, listener: str) -> bool:
    """True when ``peer`` may send PROXY headers (``upstream_proxy_networks``); logged when it may not."""
    address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    if address in proxy.networks:
        return True
    log.warning(
        "PROXY refused from unknown[%s]:%d listener=%s: not in upstream_proxy_networks", address, peer[1], listener
    )
    return False


def named_client(data: ProxyData, peer: tuple[str, int], listener: str) -> tuple[str, int] | None:
    """The client a parsed header names (``peer`` for LOCAL/UNKNOWN), or None (logged) for a bad header."""
    if not data.valid:
        log.warning(
            "PROXY header refused from unknown[%s]:%d listener=%s: %s",
            peer[0],
            peer[1],
            listener,
            data.error or "malformed",
        )
        return None
    if data.src_addr is None or not isinstance(data.src_addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return peer  # LOCAL / UNKNOWN: the balancer speaks for itself (health checks)
    return str(data.src_addr), int(data.src_port or 0)


def header_length(buffer: bytes) -> int | None:
    """Octets of the whole PROXY header at the start of ``buffer``: None while it may still come, 0 when it is
    not one (v1: ``PROXY ...CRLF`` of at most 107 octets; v2: 16 octets and the length they give)."""
    if buffer.startswith(b"PROXY"):
        end = buffer.find(b"\r\n", 0, V1_LIMIT)
        if end >= 0:
            return end + 2
        return None if len(buffer) < V1_LIMIT else 0
    if buffer.startswith(V2_SIGNATURE):
        if len(buffer) < 16:
            return None
        length = 16 + int.from_bytes(buffer[14:16], "big")
        return length if len(buffer) >= length else None
    if b"PROXY".startswith(buffer) or V2_SIGNATURE.startswith(buffer):
        return None  # a signature's first octets: wait for the rest
    return 0


async def parse_header(header: bytes) -> ProxyData:
    """aiosmtpd's parser on a header already read off the connection (implicit TLS: it comes before the handshake)."""
    reader = asyncio.StreamReader()
    reader.feed_data(header)
    reader.feed_eof()
    return await get_proxy(reader)
