"""aiosmtpd's ``SMTP`` protocol with the gateway's fixes at its choke points.

* every reply aiosmtpd writes itself gets an RFC 3463 enhanced status code
  (it sends e.g. ``503 Error: need MAIL command``): :func:`enhance` in ``push``;
* a second STARTTLS inside TLS, or STARTTLS on an implicit-TLS listener, is
  refused ``554 5.5.1`` instead of starting another handshake;
* every TLS handshake (STARTTLS, and implicit TLS, which this class runs itself
  on the accepted plain connection instead of the listening socket's) takes the
  listeners' current :class:`~gateway.tls.context.ServerTls` context, so a reload's new
  trust applies to the next handshake; a failed handshake is logged with the
  client, the listener and the fingerprints of the certificate it presented;
* the whole DATA phase has its own timeout (``smtpd_data_timeout``), and the
  message is read by :mod:`gateway.smtpd.data_reader` (bounded memory, a budget
  shared by all sessions) instead of aiosmtpd's line list;
* connections over ``smtpd_connection_limit`` or the per-client
  ``smtpd_client_connection_count_limit`` (per IPv4 address or IPv6 /64) are
  counted when accepted, before any TLS handshake, and get ``421 4.7.0`` and
  are closed (on an implicit-TLS listener just closed);
* the client (address, TLS, verified certificate) is described once the
  connection is up, for implicit TLS too, where ``session.ssl`` stays empty;
* MAIL FROM / RCPT TO addresses of the common shapes are parsed by one regex
  (:meth:`GatewaySMTP._getaddr`) instead of ``email._header_value_parser``, with
  exactly aiosmtpd's results; an angle address without its ``>`` (which the
  parser takes as an address) is refused before either sees it;
* each command passes :mod:`gateway.smtpd.strict_input` before it runs (NUL
  bytes, the junk-command limit, pipelining where it is not allowed), and a
  client that talks before the greeting is refused and closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
from asyncio import sslproto
from pathlib import Path
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException

from gateway import reply as replies
from gateway.smtpd import dsn_parameters
from gateway.smtpd.connection_limits import ConnectionLimiter, client_key
from gateway.smtpd.data_reader import DataOutcome, MemoryBudget, read_data
from gateway.smtpd.paths import split_path
from gateway.smtpd.proxied_tls import ProxiedImplicitTls
from gateway.smtpd.refusal import refuse
from gateway.smtpd.replies import enhance, is_greeting
from gateway.smtpd.strict_input import CommandChecks, InputRules, unterminated_path
from gateway.smtpd.upstream_proxy import UpstreamProxy, proxied_peer
from gateway.tls.context import ServerTls, presented_certificate_fingerprints

log = logging.getLogger("gateway.smtpd")

_AUTH_PARAMETER = re.compile(r"[ \t]+AUTH=[^ \t]*", re.IGNORECASE)
_DATA_REFUSALS = {
    DataOutcome.TOO_LONG: (replies.LINE_TOO_LONG, "line_too_long"),
    DataOutcome.TOO_BIG: (replies.MESSAGE_TOO_BIG, "message_size_limit"),
}


def peer_text(peer: object) -> str:
    """A peer address as Postfix logs a client: ``unknown[1.2.3.4]:port``; ``unknown`` when there is none.

    ``peer`` is asyncio's ``peername`` extra (a tuple, or None) or aiosmtpd's ``session.peer``.
    """
    return f"unknown[{peer[0]}]:{peer[1]}" if isinstance(peer, tuple) else "unknown"


class GatewaySMTP(ProxiedImplicitTls, SMTP):
    """The SMTP protocol object of one connection.

    Args:
        handler: the :class:`~gateway.smtpd.handler.SmtpHandler`; its
            ``start_session(server)`` coroutine runs once the connection is up and
            returns a Reply to refuse the connection with, or None. Its
            ``listener_name`` names the listener in log lines.
        limiter: shared connection counter of the listener.
        tls_mode: ``"starttls"``, ``"implicit"`` (TLS from the first byte: this
            object runs the handshake on the plain connection it is given) or ``"none"``.
        server_tls: the listeners' current server context; required unless
            ``tls_mode`` is ``"none"``.
        data_timeout: seconds allowed for the whole DATA phase.
        data_budget: memory for message text shared by all sessions (None: no limit).
        spill_dir: where a large message is kept while it arrives (the spool's ``tmp/``).
        tls_handshake_timeout: seconds an implicit-TLS client has to finish its
            handshake (``smtpd_starttls_timeout``; asyncio's own default is 60).
        input_rules: what input is refused (:mod:`gateway.smtpd.strict_input`).
        upstream_proxy: the PROXY protocol settings of a listener behind a balancer (None: no PROXY header).
        kwargs: passed to aiosmtpd's ``SMTP`` (not ``tls_context``: taken from ``server_tls``).
    """

    def __init__(
        self,
        handler: Any,
        *,
        limiter: ConnectionLimiter,
        tls_mode: str,
        server_tls: ServerTls | None,
        data_timeout: float,
        data_budget: MemoryBudget | None = None,
        spill_dir: Path | None = None,
        tls_handshake_timeout: float = 10.0,
        input_rules: InputRules = InputRules(),
        upstream_proxy: UpstreamProxy | None = None,
        **kwargs: Any,
    ) -> None:
        starttls = tls_mode == "starttls" and server_tls is not None
        super().__init__(handler, tls_context=server_tls.context if starttls and server_tls else None, **kwargs)
        # every command through the strict-input checks first (aiosmtpd dispatches from this table)
        self._smtp_methods = {
            command: functools.partial(self._checked_command, command, method)
            for command, method in self._smtp_methods.items()
        }
        self.input_rules = input_rules
        self.command_checks = CommandChecks(input_rules)
        self.greeted = False
        self.upstream_proxy = upstream_proxy
        self.proxy_peer: tuple[str, int] | None = None  # the client a PROXY header named (kept across STARTTLS)
        self._header: bytearray | None = None  # implicit TLS behind a balancer: the PROXY header so far
        self.message_has_nul = self.message_has_8bit = False  # of the message just read (for handle_DATA)
        # RFC 3461 parameters of the MAIL and the RCPT being handled (for handle_MAIL / handle_RCPT)
        self.dsn_mail = self.dsn_rcpt = dsn_parameters.NOT_ASKED
        self.early_input = b""  # what the client sent before the greeting (an early talker)
        self.limiter = limiter
        self.implicit_tls = tls_mode == "implicit"
        self.server_tls = server_tls
        self.data_timeout = data_timeout
        self.data_budget = data_budget
        self.spill_dir = spill_dir
        self.tls_handshake_timeout = tls_handshake_timeout
        self.in_ehlo = False
        self.auth_failures = 0  # failed logins in this session (gateway.smtpd.sasl)
        self.gateway_ctx: Any = None
        self._implicit_handshake: sslproto.SSLProtocol | None = None
        self._slot: str | None = None  # the limiter key this connection is counted under
        self._refused = False  # over a connection limit: closed at once

    @property
    def tls_active(self) -> bool:
        """True once the connection is encrypted (STARTTLS done, or implicit TLS)."""
        return self.implicit_tls or self._tls_protocol is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._slot is None and not self._refused:
            # The accepted connection, before any TLS: counted now, so that clients that never
            # finish a handshake cannot hold more than their share of connections.
            peer = transport.get_extra_info("peername")
            # behind a balancer the real client is known only after the PROXY header: counted in all for now
            key = f"proxy:{id(self)}" if self.upstream_proxy else client_key(str(peer[0])) if peer else "?"
            if not self.limiter.try_acquire(key, exempt=bool(peer) and self._limit_exempt(str(peer[0]))):
                self._refused = True
                log.warning("connection limit reached, refusing %s", key)
                line = refuse(
                    "connect", replies.TOO_MANY_CONNECTIONS, reason="connection_limit", client=peer_text(peer)
                )
                if not self.implicit_tls:  # in plain text; an implicit-TLS client is just closed
                    cast(asyncio.WriteTransport, transport).write(f"{line}\r\n".encode())
                transport.close()
                return
            self._slot = key
            if self.implicit_tls:
                if self.upstream_proxy is not None:  # the header comes before the TLS handshake
                    self._await_proxy_header(cast(asyncio.Transport, transport))
                    return
                self._start_implicit_tls(cast(asyncio.Transport, transport))
                return
        # A plain connection, the end of a STARTTLS handshake, or the end of the implicit one.
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._header is not None:
            self._collect_proxy_header(data)
            return
        if not self.greeted and not self.early_input:
            self.early_input = data[:64]
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self._release_slot()
        if self._refused or self._header is not None:
            return  # aiosmtpd never saw this connection
        super().connection_lost(error)

    def _release_slot(self) -> None:
        if self._slot is not None:
            self.limiter.release(self._slot)
            self._slot = None

    def _rekey(self, client: tuple[str, int]) -> bool:
        """Count this connection under the client a PROXY header named (the per-client limit); False when over."""
        self._release_slot()
        if not self.limiter.try_acquire(client_key(client[0]), exempt=self._limit_exempt(client[0])):
            return False
        self._slot, self.proxy_peer = client_key(client[0]), client
        return True

    def _limit_exempt(self, host: str) -> bool:
        exempt = getattr(self.event_handler, "connection_limit_exempt", None)
        return bool(exempt(host)) if exempt is not None else False

    def _listener_name(self) -> str:
        return str(getattr(self.event_handler, "listener_name", "?"))

    def _start_implicit_tls(self, transport: asyncio.Transport) -> None:
        # The listening socket has no SSLContext (it would keep the one it was
        # created with): the handshake runs here, with the context current now, as
        # aiosmtpd runs STARTTLS. The SSLProtocol calls connection_made again when done.
        assert self.server_tls is not None
        waiter = self.loop.create_future()
        handshake = sslproto.SSLProtocol(
            self.loop,
            self,
            self.server_tls.context,
            waiter,
            server_side=True,
            call_connection_made=True,
            ssl_handshake_timeout=self.tls_handshake_timeout,  # type: ignore[arg-type]
        )
        self._implicit_handshake = handshake
        # aiosmtpd's sign of an encrypted session (EHLO, require_starttls, AUTH).
        self._tls_protocol = handshake
        transport.set_protocol(handshake)
        handshake.connection_made(transport)
        waiter.add_done_callback(functools.partial(self._implicit_tls_done, transport, handshake))

    def _implicit_tls_done(
        self, transport: asyncio.Transport, handshake: sslproto.SSLProtocol, waiter: asyncio.Future[None]
    ) -> None:
        error = None if waiter.cancelled() else waiter.exception()
        if waiter.cancelled() or error is not None:
            self.log_handshake_failure(transport, handshake, error)
            transport.close()
            self._release_slot()  # aiosmtpd's connection_lost never comes for this connection
        elif self.session is None:
            self._release_slot()  # the client left during the handshake

    def log_handshake_failure(
        self,
        transport: asyncio.BaseTransport | None,
        handshake: sslproto.SSLProtocol | None,
        error: BaseException | None,
    ) -> None:
        """Log a failed TLS handshake: client, listener, presented certificate, OpenSSL's reason.

        Args:
            transport: the plain connection (for the client address).
            handshake: the SSLProtocol that ran the handshake (for the certificate).
            error: what ended it (``ssl.SSLError``, a lost connection, the handshake timeout).
        """
        peer = transport.get_extra_info("peername") if transport is not None else None
        client = peer_text(peer)
        fingerprints = presented_certificate_fingerprints(getattr(handshake, "_sslobj", None))
        certificate = (
            f" cert_sha256={fingerprints[0]} cert_sha1={fingerprints[1]}" if fingerprints else " no client certificate"
        )
        if error is None:
            reason = "cancelled"
        elif isinstance(error, ssl.SSLCertVerificationError):
            reason = f"certificate verify failed: {error.verify_message}"
        else:
            reason = str(error) or type(error).__name__
        log.info(
            "TLS handshake failed from %s listener=%s%s: %s",
            client,
            getattr(self.event_handler, "listener_name", "?"),
            certificate,
            reason,
        )

    def close_if_idle(self) -> bool:
        """At shutdown: with no mail transaction open, say ``421 4.3.2`` and close (RFC 5321 §3.8).

        A session between MAIL and the end of DATA is left alone (its message may still be
        acknowledged); aiosmtpd clears the envelope and writes the DATA reply without a
        pause in between, so a 250 is always written before this can close the connection.

        Returns:
            bool: True when the connection is closed (or closing), False while a transaction is open.
        """
        if self.transport is None or self.transport.is_closing():
            return True
        if self.envelope is not None and self.envelope.mail_from is not None:
            return False
        cast(asyncio.WriteTransport, self.transport).write(f"{replies.SHUTTING_DOWN}\r\n".encode("ascii"))
        self.transport.close()
        return True

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split ``<local@domain> params`` into the address and the rest: aiosmtpd's results, faster
        (:func:`gateway.smtpd.paths.split_path`)."""
        return split_path(arg, self.local_part_limit, super()._getaddr)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self.in_ehlo and not is_greeting(status, self.hostname):
            status = enhance(status)
        await super().push(status)

    async def _handle_client(self) -> None:
        try:
            if self.upstream_proxy is not None and self.proxy_peer is None and not await self._read_proxy_header():
                return
            refusal = await self.event_handler.start_session(self)
            if refusal is None:
                refusal = await self._pregreet_refusal()
            if refusal is not None:
                await super().push(str(refusal))
                if self.transport is not None:
                    self.transport.close()
                return
            self.greeted = True  # aiosmtpd writes the greeting first thing
            await super()._handle_client()
        finally:
            self._release_slot()
            self.event_handler.end_session(self)

    async def _read_proxy_header(self) -> bool:
        """The PROXY header (:mod:`gateway.smtpd.upstream_proxy`); False with the connection closed or refused."""
        assert self.upstream_proxy is not None and self.transport is not None
        peer = self.transport.get_extra_info("peername")
        client = await proxied_peer(
            self._reader, (str(peer[0]), int(peer[1])), self.upstream_proxy, self._listener_name()
        )
        if client is not None:
            if self._rekey(client):  # counted again under the real client, for the per-client limit
                # the header was expected before the greeting; only what came after it talked first
                self.early_input = bytes(getattr(self._reader, "_buffer", b"")[:64])
                return True
            await super().push(
                refuse("connect", replies.TOO_MANY_CONNECTIONS, reason="connection_limit", client=peer_text(client))
            )
        self.transport.close()
        return False

    async def _pregreet_refusal(self) -> str | None:
        """An untrusted client that talked before the greeting (after ``smtpd_pregreet_wait``): refused."""
        ctx = self.gateway_ctx
        if ctx is not None and ctx.client.trusted:
            return None
        if self.input_rules.pregreet_wait and not self.early_input:
            await asyncio.sleep(self.input_rules.pregreet_wait)
        if not self.early_input:
            return None
        return refuse(
            "connect",
            replies.TALKED_BEFORE_GREETING,
            reason="pregreet",
            client=ctx.client.describe() if ctx is not None else "unknown",
            detail=repr(self.early_input),
        )

    async def _checked_command(self, command: str, method: Any, arg: str | None) -> None:
        """Run ``method`` for ``command`` unless :class:`~gateway.smtpd.strict_input.CommandChecks` refuses it."""
        if self.transport is None or self.transport.is_closing():
            return  # refused and closed: what the client sent after it is dropped unread
        pending = bool(getattr(self._reader, "_buffer", b""))  # input already here past this command's line
        esmtp = self.session is not None and bool(self.session.extended_smtp)
        violation = self.command_checks.check(command, arg, pending_input=pending, esmtp=esmtp)
        if violation is None:
            await method(arg)
            return
        await self.push(
            refuse(
                "session",
                violation.reply,
                reason=violation.reason,
                client=self._peer_text(),
                detail=f"{command} {arg or ''}".strip()[:64],
            )
        )  # the log escapes control characters
        if violation.closes and self.transport is not None:
            self.transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        self.in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self.in_ehlo = False

    async def smtp_HELO(self, hostname: str) -> None:
        self.in_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self.in_ehlo = False

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.tls_active:
            await self.push(str(replies.TLS_ALREADY_ACTIVE))
            return
        if self.server_tls is not None and self.tls_context is not None:
            self.tls_context = self.server_tls.context  # a reload since connect applies to this handshake
        transport = self.transport
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as error:
            self.log_handshake_failure(transport, self._tls_protocol, error.__cause__)
            raise

    async def smtp_AUTH(self, arg: str | None) -> None:
        # The gateway's own exchange (gateway.smtpd.sasl), not aiosmtpd's
        await self.event_handler.authenticate(self, arg or "")

    async def smtp_MAIL(self, arg: str | None) -> None:
        if unterminated_path(arg, "FROM:"):
            await self.push(
                refuse("mail", replies.BAD_SENDER_SYNTAX, reason="bad_address", client=self._peer_text(), sender=arg)
            )
            return
        # RFC 4954 §5: AUTH=<mailbox> is taken and ignored (it grants nothing; aiosmtpd would answer 555)
        arg = _AUTH_PARAMETER.sub("", arg) if arg else arg
        try:
            arg, self.dsn_mail = dsn_parameters.split_off(arg, "FROM:", dsn_parameters.MAIL_PARAMETERS, self._getaddr)
        except dsn_parameters.ParameterError as error:
            await self.push(refuse("mail", error.reply, reason="bad_dsn_parameter", client=self._peer_text()))
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if unterminated_path(arg, "TO:"):
            await self.push(
                refuse(
                    "rcpt",
                    replies.BAD_ADDRESS_SYNTAX,
                    reason="bad_address",
                    client=self._peer_text(),
                    recipients=[arg or ""],
                )
            )
            return
        try:
            arg, self.dsn_rcpt = dsn_parameters.split_off(arg, "TO:", dsn_parameters.RCPT_PARAMETERS, self._getaddr)
        except dsn_parameters.ParameterError as error:
            await self.push(refuse("rcpt", error.reply, reason="bad_dsn_parameter", client=self._peer_text()))
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA with the gateway's reader (:mod:`gateway.smtpd.data_reader`) instead of aiosmtpd's.

        The checks before the 354 and the hook call after the message are
        aiosmtpd's (``SMTP.smtp_DATA``), so the handler's ``handle_DATA`` sees the
        same envelope; only the reading differs: bounded memory, and the shared
        :class:`~gateway.smtpd.data_reader.MemoryBudget` (``452 4.3.1`` when used up).
        """
        self._reset_timeout(self.data_timeout)
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(str(replies.NEED_RCPT))
            return
        if arg:
            await self.push(str(replies.DATA_SYNTAX))
            return
        await self.push(replies.START_MAIL_INPUT)
        try:
            result = await read_data(
                self._reader, size_limit=self.data_size_limit, budget=self.data_budget, spill_dir=self.spill_dir
            )
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        except OSError as error:
            # No room for the spill file: the rest of the message cannot be read, so the session ends.
            log.error("DATA from %s: cannot keep the message (%s); closing", self._peer_text(), error)
            await super().push(str(replies.SPOOL_FULL_CLOSING))
            self._writer.close()
            return
        reserved, outcome, content = result.reserved, result.outcome, result.content
        self.message_has_nul, self.message_has_8bit = result.has_nul, result.has_8bit
        del result  # the handler and the envelope hold the text from here; it is freed when they let go
        try:
            if outcome is not DataOutcome.COMPLETE:
                reply, reason = _DATA_REFUSALS[outcome]
                line = refuse(
                    "data",
                    reply,
                    reason=reason,
                    client=self._peer_text(),
                    sender=self.envelope.mail_from,
                    recipients=self.envelope.rcpt_tos,
                    helo=self.session.host_name if self.session is not None else None,
                )
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                await self.push(line)
                return
            # aiosmtpd types these bytes | str; a large message is a FileText (bytes-like, read-only)
            self.envelope.content = self.envelope.original_content = content  # type: ignore[assignment]
            del content
            status = await self._call_handler_hook("DATA")
            if status is MISSING or str(status).startswith("250"):
                self.command_checks.message_accepted()
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(str(replies.OK) if status is MISSING else status)
        finally:
            if self.data_budget is not None:
                self.data_budget.give(reserved)

    def _peer_text(self) -> str:
        return peer_text(self.session.peer if self.session is not None else None)
