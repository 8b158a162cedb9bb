"""One delivery attempt to one SMTP server, with aiosmtplib, and a connection cache.

Outcome rules (Postfix smtp(8)):

* connection refused, timeout, a 4xx/5xx greeting or EHLO, a TLS failure, or a
  4xx reply to MAIL FROM → :class:`~gateway.errors.DeliveryError`: the caller
  tries the next host;
* a 5xx reply to MAIL FROM is final for every recipient of the attempt;
* RCPT replies are per recipient; the DATA reply applies to every recipient the
  server accepted.

A cached session is reused without a probing RSET (the previous transaction
ended with its DATA reply, RFC 5321 §4.1.4): if the server has gone away or
answers the first command with 421, the attempt is made again once on a new
connection, so a stale cached session never defers mail.

TLS follows ``smtp_tls_security_level``: ``none`` never, ``may`` when offered
(unverified), ``encrypt`` required (unverified), ``verify`` required with the
certificate checked against the host name.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from gateway.config import Config
from gateway.errors import DeliveryError
from gateway.message import FileText, crlf_line_ends, whole_lines
from gateway.relay import replies
from gateway.relay.dsn_format import xtext
from gateway.relay.reply_watch import OnSuccess, watch_final_reply
from gateway.relay.routing import TargetHost
from gateway.reply import Reply

log = logging.getLogger("gateway.relay")

# (recipients the end-of-data 2xx delivers, whether the DSN parameters went with them)
OnAccepted = Callable[[list[str], bool], None]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """Per-recipient replies of one attempt, keyed by recipient address; ``dsn_passed``: the host offered DSN,
    so the RFC 3461 parameters went on with the message (and its success notices are that host's)."""

    replies: dict[str, Reply]
    host: TargetHost
    dsn_passed: bool = False


@dataclass(frozen=True, slots=True)
class DsnOptions:
    """RFC 3461 parameters to pass on to a next hop that offers DSN.

    ret, envid: of MAIL. recipients: address -> (NOTIFY words or None, ORCPT ``"type;address"`` or None).
    """

    ret: str | None = None
    envid: str | None = None
    recipients: dict[str, tuple[tuple[str, ...] | None, str | None]] = field(default_factory=dict)

    def mail_options(self) -> list[str]:
        """``RET=`` and ``ENVID=`` (xtext) for MAIL."""
        return ([f"RET={self.ret}"] if self.ret else []) + ([f"ENVID={xtext(self.envid)}"] if self.envid else [])

    def rcpt_options(self, recipient: str) -> list[str]:
        """``NOTIFY=`` and ``ORCPT=`` (xtext) for one RCPT."""
        notify, orcpt = self.recipients.get(recipient, (None, None))
        options = [f"NOTIFY={','.join(notify)}"] if notify else []
        if orcpt:
            addr_type, _, address = orcpt.partition(";")
            options.append(f"ORCPT={addr_type};{xtext(address)}")
        return options


DATA_CHUNK_BYTES = 256 * 1024  # message bytes encoded and written at a time; bounds the extra memory


def _encoded(piece: bytes) -> bytes:
    """aiosmtplib's ``LINE_ENDINGS_REGEX`` and ``PERIOD_REGEX`` substitutions on a piece that starts a line.

    As byte replacements: the same result without a Python object per line
    (the regexes made 9 MB of empty lines cost 12 MB more and 1.7 s).
    CRLF, then lone CR, become LF; every LF becomes CRLF; a dot starting a line is doubled.
    """
    piece = crlf_line_ends(piece)
    if piece[:1] == b".":
        piece = b"." + piece
    return piece.replace(b"\n.", b"\n..")


def data_chunks(message: bytes | FileText, chunk_bytes: int = DATA_CHUNK_BYTES) -> Iterator[bytes]:
    """``message`` encoded for the DATA phase, in pieces, without the final ``.`` line.

    Line ends become CRLF, lines starting with ``.`` get another one (RFC 5321
    §4.5.2), and the last line ends in CRLF: the bytes aiosmtplib's ``data()``
    sends, but made ``chunk_bytes`` (plus the rest of a line) at a time, so a
    large message is not copied whole two or three times. Pieces are cut right
    after a LF, so no line end or line start is split.
    """
    if isinstance(message, FileText):
        yield from _file_chunks(message, chunk_bytes)
        return
    start, size = 0, len(message)
    if size == 0:
        yield b"\r\n"
        return
    while start < size:
        cut = message.find(b"\n", start + chunk_bytes - 1)
        end = size if cut == -1 else cut + 1
        piece = _encoded(message[start:end])
        if end == size and not piece.endswith(b"\r\n"):
            piece += b"\r\n"
        yield piece
        start = end


def _file_chunks(message: FileText, chunk_bytes: int) -> Iterator[bytes]:
    """:func:`data_chunks` of a file-held message: bounded reads (pread), never the whole file mapped in."""
    for lines in whole_lines(message.chunks(size=chunk_bytes)):
        piece = _encoded(lines)
        yield piece if piece.endswith(b"\r\n") else piece + b"\r\n"  # the last line, without a line end


def _reply(error: aiosmtplib.SMTPResponseException) -> Reply:
    return Reply.from_remote(error.code, error.message)


@dataclass(frozen=True, slots=True)
class _Job:
    """What :meth:`SmtpClient.deliver` was asked to send, handed to each attempt at it (see its arguments)."""

    host: TargetHost
    sender: str
    recipients: list[str]
    message: bytes | FileText
    smtputf8: bool
    body_8bitmime: bool
    dsn: DsnOptions | None
    on_accepted: OnAccepted | None


class _StaleSession(Exception):
    """A reused session failed at its first command: try again on a new connection."""


class ConnectionCache:
    """Idle SMTP connections per target host, kept at most ``ttl`` seconds
    (Postfix ``smtp_connection_cache_time_limit``)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._idle: dict[tuple[str, int], list[tuple[float, aiosmtplib.SMTP]]] = {}

    def take(self, host: TargetHost) -> aiosmtplib.SMTP | None:
        """An idle, still connected session to ``host``, or None."""
        idle = self._idle.get((host.address, host.port), [])
        now = time.monotonic()
        while idle:
            since, smtp = idle.pop()
            if now - since <= self.ttl and smtp.is_connected:
                return smtp
            smtp.close()
        return None

    def put(self, host: TargetHost, smtp: aiosmtplib.SMTP) -> None:
        """Keep a session whose transaction is complete."""
        self._idle.setdefault((host.address, host.port), []).append((time.monotonic(), smtp))

    def sweep(self) -> None:
        """Close sessions idle longer than ``ttl``."""
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = []
            for since, smtp in idle:
                if now - since <= self.ttl and smtp.is_connected:
                    keep.append((since, smtp))
                else:
                    smtp.close()
            self._idle[key] = keep

    async def close(self) -> None:
        """QUIT every cached session (bounded by a short timeout)."""
        for idle in self._idle.values():
            for _, smtp in idle:
                try:
                    await asyncio.wait_for(smtp.quit(), 2)
                except Exception:
                    smtp.close()
        self._idle.clear()


class SmtpClient:
    """Delivers one message to one host (see the module docstring for outcome rules)."""

    def __init__(self, config: Config, tls_context: ssl.SSLContext | None, cache: ConnectionCache) -> None:
        self.config = config
        self.tls_context = tls_context
        self.cache = cache

    async def connect(self, host: TargetHost) -> aiosmtplib.SMTP:
        """A session with ``host`` after EHLO, STARTTLS and AUTH as configured (for :mod:`gateway.relay.probe`).

        Raises:
            DeliveryError: the connection or its set-up failed (the reply says why).
        """
        return await self._open(host)

    async def _open(self, host: TargetHost) -> aiosmtplib.SMTP:
        level = self.config.smtp_tls_security_level
        smtp = aiosmtplib.SMTP(
            hostname=host.address,
            port=host.port,
            local_hostname=self.config.myhostname,
            timeout=self.config.smtp_timeout,
            start_tls=False,
            validate_certs=False,
        )
        try:
            await asyncio.wait_for(smtp.connect(), self.config.smtp_connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as error:
            raise DeliveryError(_reply(error)) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            raise DeliveryError(replies.connect_failed(host.describe(), error)) from None
        try:
            await self._hello(smtp)
            if level != "none" and (smtp.supports_extension("starttls") or level in ("encrypt", "verify")):
                if not smtp.supports_extension("starttls"):
                    raise DeliveryError(replies.starttls_not_offered(host.describe()))
                await smtp.starttls(server_hostname=host.name, tls_context=self.tls_context)
                await self._hello(smtp)  # RFC 3207 §4.2: forget what was learnt before TLS
            credentials = self.config.smtp_sasl_password_maps.get(str(host.hop))
            if credentials:
                if not smtp.supports_extension("auth"):
                    raise DeliveryError(replies.auth_not_offered(host.describe()))
                await smtp.login(*credentials)
        except DeliveryError:
            smtp.close()
            raise
        except aiosmtplib.SMTPResponseException as error:
            smtp.close()
            reply = _reply(error)
            if isinstance(error, aiosmtplib.SMTPAuthenticationError):
                reply = replies.sasl_failed(reply, error.code)
            raise DeliveryError(reply) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as error:
            smtp.close()
            raise DeliveryError(replies.lost_connection(host.describe(), error)) from None
        return smtp

    @staticmethod
    async def _hello(smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()

    async def deliver(
        self,
        host: TargetHost,
        sender: str,
        recipients: list[str],
        message: bytes | FileText,
        *,
        smtputf8: bool,
        body_8bitmime: bool,
        dsn: DsnOptions | None = None,
        on_accepted: OnAccepted | None = None,
    ) -> AttemptResult:
        """Send ``message`` to ``recipients`` through ``host``.

        ``on_accepted(recipients, dsn_passed)``: called at most once, from the transport's data callback the
        moment ``host`` answers the end of data with 2xx (:mod:`gateway.relay.reply_watch`), with the
        recipients that reply delivers and whether the DSN parameters went with them; before this returns.

        Raises:
            DeliveryError: when the attempt failed before per-recipient replies.
        """
        job = _Job(host, sender, recipients, message, smtputf8, body_8bitmime, dsn, on_accepted)
        smtp = self.cache.take(host)
        if smtp is not None:
            try:
                return await self._attempt_on(smtp, job, reused=True)
            except _StaleSession:
                pass
        return await self._attempt_on(await self._open(host), job, reused=False)

    async def _attempt_on(self, smtp: aiosmtplib.SMTP, job: _Job, *, reused: bool) -> AttemptResult:
        host = job.host
        try:
            result = await self._transaction(smtp, job, reused=reused)
        except (DeliveryError, _StaleSession):
            smtp.close()
            raise
        except (ValueError, UnicodeError) as error:
            # aiosmtplib refuses control characters or unencodable addresses: they never can be sent
            smtp.close()
            reply = replies.address_unsendable(error)
            return AttemptResult({r: reply for r in job.recipients}, host)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            smtp.close()
            raise DeliveryError(replies.lost_connection(host.describe(), error)) from None
        self.cache.put(host, smtp)
        return result

    async def _send_data(
        self, smtp: aiosmtplib.SMTP, message: bytes | FileText, on_success: OnSuccess | None = None
    ) -> aiosmtplib.SMTPResponse:
        """DATA, the message in pieces (:func:`data_chunks`) under flow control, and the final reply;
        ``on_success()`` runs in the transport's callback if that reply is 2xx (:func:`watch_final_reply`).

        Raises:
            aiosmtplib.SMTPDataError: the server refused DATA or the message.
            aiosmtplib.SMTPException, OSError, asyncio.TimeoutError: the session failed; the
                server took no bytes for ``smtp_timeout`` seconds.
        """
        start = await smtp.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = smtp.protocol
        if protocol is None or protocol.transport is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
        # A write transport (uvloop's transports are not asyncio.WriteTransport subclasses).
        transport = cast(asyncio.WriteTransport, protocol.transport)
        for piece in data_chunks(message):
            protocol.write(piece)
            await self._drained(transport)
        # No await between the end of data and reading the reply: aiosmtplib only keeps a
        # reply that arrives while a read is pending.
        with watch_final_reply(protocol, transport, on_success):
            protocol.write(b".\r\n")
            response = await self._final_reply(protocol, transport)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def _final_reply(self, protocol: SMTPProtocol, transport: asyncio.WriteTransport) -> aiosmtplib.SMTPResponse:
        """The reply to the end of data, at most ``smtp_timeout`` seconds away.

        Not through ``read_response(timeout=...)``: its ``asyncio.wait_for`` costs one more turn of
        the event loop (Python 3.11) between the server's 250 and the worker, which marks the
        recipients done right after it (issue 17). A timer aborts the connection instead.

        Raises:
            asyncio.TimeoutError: no reply within ``smtp_timeout`` seconds (the connection is aborted).
            aiosmtplib.SMTPException: the connection was lost, or the reply was malformed.
        """
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            transport.abort()

        timer = asyncio.get_running_loop().call_later(self.config.smtp_timeout, expire)
        try:
            return await protocol.read_response(timeout=None)
        except aiosmtplib.SMTPServerDisconnected:
            if expired:
                raise TimeoutError(f"no reply to the end of data in {self.config.smtp_timeout:.0f}s") from None
            raise
        finally:
            timer.cancel()

    async def _drained(self, transport: asyncio.WriteTransport) -> None:
        # Public transport API only: wait while more than a piece is buffered, as long as bytes move.
        buffered = transport.get_write_buffer_size()
        stalled_since = time.monotonic()
        while buffered > DATA_CHUNK_BYTES:
            if transport.is_closing():
                raise aiosmtplib.SMTPServerDisconnected("connection lost during the message")
            await asyncio.sleep(0.002)
            now_buffered = transport.get_write_buffer_size()
            if now_buffered < buffered:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > self.config.smtp_timeout:
                raise TimeoutError(f"no message bytes taken for {self.config.smtp_timeout:.0f}s")
            buffered = now_buffered

    async def _transaction(self, smtp: aiosmtplib.SMTP, job: _Job, *, reused: bool) -> AttemptResult:
        host, sender, recipients, message, dsn = job.host, job.sender, job.recipients, job.message, job.dsn
        smtputf8, body_8bitmime, on_accepted = job.smtputf8, job.body_8bitmime, job.on_accepted
        options = []
        encoding = "ascii"
        needs_utf8 = not sender.isascii() or not all(r.isascii() for r in recipients)
        if needs_utf8 and not smtp.supports_extension("smtputf8"):
            # RFC 6531 §3.4: a non-ASCII address cannot be downgraded
            reply = replies.smtputf8_not_offered(host.describe())
            return AttemptResult({r: reply for r in recipients}, host)
        if (smtputf8 or needs_utf8) and smtp.supports_extension("smtputf8"):
            options.append("SMTPUTF8")
            encoding = "utf-8"
        if (body_8bitmime or smtputf8) and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(message)}")
        dsn_passed = dsn is not None and smtp.supports_extension("dsn")
        if dsn_passed:
            assert dsn is not None
            options += dsn.mail_options()
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPSenderRefused as error:
            if reused and error.code == 421:
                raise _StaleSession() from None  # e.g. an idle timeout at the server
            reply = _reply(error)
            if reply.is_transient:
                raise DeliveryError(reply) from None
            return AttemptResult({r: reply for r in recipients}, host)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            if reused:
                raise _StaleSession() from None
            raise
        per_recipient: dict[str, Reply] = {}
        accepted: list[str] = []
        for recipient in recipients:
            try:
                response = await smtp.rcpt(
                    recipient, options=dsn.rcpt_options(recipient) if dsn_passed and dsn else [], encoding=encoding
                )
            except aiosmtplib.SMTPRecipientRefused as error:
                per_recipient[recipient] = _reply(error)
                continue
            accepted.append(recipient)
            per_recipient[recipient] = Reply.from_remote(response.code, response.message)
        if not accepted:
            await smtp.rset()
            return AttemptResult(per_recipient, host, dsn_passed)
        try:
            on_success = None if on_accepted is None else lambda: on_accepted(accepted, dsn_passed)
            response = await self._send_data(smtp, message, on_success)
            data_reply = Reply.from_remote(response.code, response.message)
        except aiosmtplib.SMTPDataError as error:
            data_reply = _reply(error)
        for recipient in accepted:
            per_recipient[recipient] = data_reply
        return AttemptResult(per_recipient, host, dsn_passed)
