"""Implicit TLS (465) behind a balancer: the PROXY header is read off the raw connection before the handshake.

On a STARTTLS or plain listener the header is read from the stream
(:func:`gateway.smtpd.upstream_proxy.proxied_peer`); on an implicit-TLS one the
client's TLS ClientHello follows the header in the same segment, so
:class:`ProxiedImplicitTls` (mixed into :class:`~gateway.smtpd.protocol.GatewaySMTP`)
collects the header from ``data_received``, pauses reading, checks it, counts the
connection under the client it names, starts the TLS layer and hands it the
octets that followed the header.
"""

from __future__ import annotations

import asyncio
from asyncio import sslproto

from aiosmtpd.proxy_protocol import ProxyData

from gateway.smtpd.upstream_proxy import (
    UpstreamProxy,
    from_a_balancer,
    header_length,
    log_missing,
    named_client,
    parse_header,
)


class ProxiedImplicitTls:
    """The PROXY header of an implicit-TLS connection (the attributes are :class:`GatewaySMTP`'s)."""

    loop: asyncio.AbstractEventLoop
    upstream_proxy: UpstreamProxy | None
    _implicit_handshake: sslproto.SSLProtocol | None
    _refused: bool
    _header: bytearray | None
    _raw_transport: asyncio.Transport
    _raw_peer: tuple[str, int]
    _header_timer: asyncio.TimerHandle

    # GatewaySMTP's own (it comes first in the method order):
    def _start_implicit_tls(self, transport: asyncio.Transport) -> None:
        raise NotImplementedError

    def _rekey(self, client: tuple[str, int]) -> bool:
        raise NotImplementedError

    def _listener_name(self) -> str:
        raise NotImplementedError

    def _await_proxy_header(self, transport: asyncio.Transport) -> None:
        """Implicit TLS behind a balancer: collect the PROXY header (:meth:`_collect_proxy_header`), then the TLS."""
        assert self.upstream_proxy is not None
        peer = transport.get_extra_info("peername")
        self._raw_peer = (str(peer[0]), int(peer[1]))
        if not from_a_balancer(self._raw_peer, self.upstream_proxy, self._listener_name()):
            self._refused = True
            transport.close()
            return
        self._header, self._raw_transport = bytearray(), transport
        self._header_timer = self.loop.call_later(self.upstream_proxy.timeout, self._proxy_header_late)

    def _proxy_header_late(self) -> None:
        assert self.upstream_proxy is not None
        log_missing(self._raw_peer, self._listener_name(), self.upstream_proxy.timeout)
        self._raw_transport.close()

    def _collect_proxy_header(self, data: bytes) -> None:
        assert self._header is not None
        self._header += data
        length = header_length(bytes(self._header))
        if length is None:
            return
        self._header_timer.cancel()
        header, rest, self._header = bytes(self._header[:length]), bytes(self._header[length:]), None
        if not length:
            self._refused = True
            named_client(
                ProxyData(version=None).with_error("PROXY unrecognized signature"),
                self._raw_peer,
                self._listener_name(),
            )
            self._raw_transport.close()
            return
        self._raw_transport.pause_reading()  # the rest goes to the TLS layer once it exists
        self.loop.create_task(self._proxied_tls(header, rest))

    async def _proxied_tls(self, header: bytes, rest: bytes) -> None:
        client = named_client(await parse_header(header), self._raw_peer, self._listener_name())
        transport = self._raw_transport
        if client is None or not self._rekey(client):
            self._refused = True
            transport.close()
            return
        self._start_implicit_tls(transport)
        handshake = self._implicit_handshake
        assert handshake is not None
        while rest:  # what followed the header (the ClientHello): to the TLS protocol, as the loop would
            buffer = handshake.get_buffer(len(rest))
            taken = min(len(buffer), len(rest))
            buffer[:taken] = rest[:taken]
            handshake.buffer_updated(taken)
            rest = rest[taken:]
        transport.resume_reading()
