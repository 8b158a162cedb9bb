"""Who is on the other end of an SMTP connection: address, port, TLS facts and a verified certificate."""

from __future__ import annotations

import asyncio
import ipaddress

from gateway.envelope import ClientInfo
from gateway.tls.context import peer_certificate_fingerprints, tls_session_info


def client_of(
    transport: asyncio.BaseTransport | None, listener: str, peer: tuple[str, int] | None = None
) -> ClientInfo:
    """A :class:`ClientInfo` for the connection on ``transport`` (its peer address and port, its TLS).

    ``peer``: the client a PROXY header named, instead of the connection's own peer (a balancer).
    A scope id (``fe80::1%eth0``) is dropped; no transport (a closed connection) gives ``0.0.0.0:0``.
    """
    if peer is None:
        peer = transport.get_extra_info("peername") if transport is not None else None
    address = ipaddress.ip_address(peer[0].split("%", 1)[0]) if peer else ipaddress.ip_address("0.0.0.0")
    client = ClientInfo(address=address, port=int(peer[1]) if peer else 0, listener=listener)
    describe_tls(transport, client)
    return client


def describe_tls(transport: asyncio.BaseTransport | None, client: ClientInfo) -> None:
    """Record on ``client`` the TLS version and cipher of ``transport`` and a verified client certificate."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    client.tls_version, client.tls_cipher = tls_session_info(ssl_object)
    fingerprints = peer_certificate_fingerprints(ssl_object)
    client.cert_sha256, client.cert_sha1 = fingerprints if fingerprints else (None, None)
