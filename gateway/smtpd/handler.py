"""The aiosmtpd handler: SMTP stages → pipeline → spool → reply.

This is the one seam to aiosmtpd (policies never import it). Every outcome is
turned into a :class:`~gateway.reply.Reply` here; an unexpected exception
becomes ``451 4.3.0`` with a generic text (never the exception text).

The message is assembled by :func:`gateway.pipeline.finish.finish` (Received:,
edits, DKIM) and committed through :class:`gateway.spool.intake.Intake`, whose
commit is shielded: aiosmtpd cancels ``handle_DATA`` when the client disconnects
or times out, but a commit that has started always finishes and the message is
then delivered, even if the 250 never reached the client.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from typing import Any

from aiosmtpd.smtp import SMTP as AioSMTP, Envelope as AioEnvelope, Session, TLSSetupException

from gateway import metrics
from gateway import reply as replies
from gateway.addresses import split_mailbox
from gateway.config import Config
from gateway.envelope import ClientInfo, Direction, Envelope
from gateway.errors import SpoolError, SpoolFullError
from gateway.message import message_size, received_count
from gateway.pipeline.build import Pipelines
from gateway.pipeline.policy import PolicyContext
from gateway.pipeline.finish import finish
from gateway.pipeline.received import received_header
from gateway.reply import Reply
from gateway.smtpd.protocol import GatewaySMTP
from gateway.spool import QueueState, RecipientStatus, SpoolEntry, new_queue_id
from gateway.spool.intake import Intake
from gateway.smtpd.refusal import refuse
from gateway.tls.context import peer_certificate_fingerprints, tls_session_info
from gateway.verdict import Action, HeaderEdit, Verdict

log = logging.getLogger("gateway.smtpd")

# Never deliverable, and unsafe in logs and terminals: ASCII and C1 controls, line/paragraph
# separators, and surrogates (bytes that were not UTF-8, kept by aiosmtpd's surrogateescape).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _addresses(recipients: list[str]) -> str:
    return ",".join(f"<{r}>" for r in recipients)


class SmtpHandler:
    """Handler object given to every :class:`GatewaySMTP` of one listener.

    Args:
        config: the gateway configuration.
        listener_name: the listener's name, recorded in ClientInfo and logs.
        pipelines: the access pipeline and the content pipelines per direction.
        intake: commits accepted mail and hands it to the relay worker.
        tls_mode: the listener's TLS mode, for the connection metric.
    """

    def __init__(self, config: Config, listener_name: str, pipelines: Pipelines, intake: Intake,
                 tls_mode: str = "none") -> None:
        self.config = config
        self.listener_name = listener_name
        self.tls_mode = tls_mode
        self.pipelines = pipelines
        self.intake = intake
        self.sessions: set[GatewaySMTP] = set()

    # ---- connection life ----

    def _describe_tls(self, server: AioSMTP, client: ClientInfo) -> None:
        transport = server.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        client.tls_version, client.tls_cipher = tls_session_info(ssl_object)
        fingerprints = peer_certificate_fingerprints(ssl_object)
        client.cert_sha256, client.cert_sha1 = fingerprints if fingerprints else (None, None)

    async def start_session(self, server: GatewaySMTP) -> Reply | None:
        """Describe the client and run connect policies; a Reply refuses the connection."""
        peer = server.transport.get_extra_info("peername") if server.transport else None
        address = ipaddress.ip_address(peer[0].split("%", 1)[0]) if peer else ipaddress.ip_address("0.0.0.0")
        client = ClientInfo(address=address, port=int(peer[1]) if peer else 0, listener=self.listener_name)
        self._describe_tls(server, client)
        ctx = PolicyContext(client=client)
        server.gateway_ctx = ctx  # on the protocol: aiosmtpd replaces the Session at STARTTLS
        self.sessions.add(server)
        metrics.CONNECTIONS.labels(self.listener_name, self.tls_mode).inc()
        metrics.SESSIONS_OPEN.labels(self.listener_name).inc()
        log.info("connect from %s listener=%s%s", client.describe(), self.listener_name,
                 f" tls={client.tls_version}" if client.tls_version else "")
        result = await self.pipelines.access.connect(ctx)
        if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
            assert result.verdict.reply is not None
            metrics.CONNECTIONS_REFUSED.labels(self.listener_name).inc()
            reply = replies.SERVICE_UNAVAILABLE if result.verdict.reply.is_transient else result.verdict.reply
            refuse("connect", reply, reason=result.verdict.reason or "policy", client=client.describe())
            return reply
        return None

    def end_session(self, server: GatewaySMTP) -> None:
        """Forget the session (called when the connection ends, however it ends)."""
        if server in self.sessions:
            metrics.SESSIONS_OPEN.labels(self.listener_name).dec()
        self.sessions.discard(server)
        ctx = getattr(server, "gateway_ctx", None)
        if ctx is not None:
            log.info("disconnect from %s", ctx.client.describe())

    @staticmethod
    def _refuse(stage: str, verdict: Verdict, ctx: PolicyContext, *, reply: Reply | None = None,
                recipient: str | None = None, helo: str | None = None) -> str:
        """A policy's refusal of ``stage``, through the one seam (:func:`gateway.smtpd.refusal.refuse`)."""
        assert verdict.reply is not None
        envelope = ctx.envelope
        return refuse(stage, reply or verdict.reply, reason=verdict.reason or "policy", client=ctx.client.describe(),
                      sender=envelope.sender if envelope is not None else None,
                      recipients=[recipient] if recipient else (), helo=helo if helo is not None else ctx.client.helo,
                      detail=verdict.detail)

    @staticmethod
    def _ctx(server: AioSMTP) -> PolicyContext:
        return server.gateway_ctx  # type: ignore[attr-defined,no-any-return]

    def handle_STARTTLS(self, server: AioSMTP, session: Session, envelope: AioEnvelope) -> bool:
        """After a STARTTLS handshake: record TLS version, cipher and a verified client certificate."""
        client = self._ctx(server).client
        self._describe_tls(server, client)
        client.helo = None
        log.info("STARTTLS from %s %s %s%s", client.describe(), client.tls_version, client.tls_cipher,
                 f" cert_sha256={client.cert_sha256}" if client.cert_sha256 else "")
        return True

    # ---- commands ----

    async def handle_EHLO(self, server: AioSMTP, session: Session, envelope: AioEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """Record the EHLO name; advertise PIPELINING and ENHANCEDSTATUSCODES, no AUTH yet."""
        ctx = self._ctx(server)
        result = await self.pipelines.access.helo(ctx, hostname)
        if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return [self._refuse("ehlo", result.verdict, ctx, helo=hostname)]
        session.host_name = hostname
        ctx.client.helo = hostname
        lines = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        return lines[:1] + list(replies.EHLO_EXTENSIONS) + lines[1:]

    async def handle_HELO(self, server: AioSMTP, session: Session, envelope: AioEnvelope,
                          hostname: str) -> str:
        """Record the HELO name."""
        ctx = self._ctx(server)
        result = await self.pipelines.access.helo(ctx, hostname)
        if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return self._refuse("helo", result.verdict, ctx, helo=hostname)
        session.host_name = hostname
        ctx.client.helo = hostname
        return replies.helo_ok(server.hostname)

    async def handle_MAIL(self, server: AioSMTP, session: Session, envelope: AioEnvelope,
                          address: str, mail_options: list[str]) -> str:
        """Check the sender and start a transaction; the queue ID is assigned here."""
        ctx = self._ctx(server)
        sender = "" if address == "<>" else address
        if sender:
            try:
                split_mailbox(sender)
                if _CONTROL.search(sender):
                    raise ValueError("control characters")
            except ValueError:
                return refuse("mail", replies.BAD_SENDER_SYNTAX, reason="bad_address", client=ctx.client.describe(),
                              sender=sender, helo=ctx.client.helo)
        options = [option.upper() for option in mail_options]
        declared = next((o.split("=", 1)[1] for o in options if o.startswith("SIZE=")), None)
        ctx.envelope = Envelope(sender=sender, smtputf8=envelope.smtp_utf8,
                                body_8bitmime="BODY=8BITMIME" in options,
                                declared_size=int(declared) if declared and declared.isdigit() else None)
        if not self._room_for(ctx.envelope.declared_size or 0):
            ctx.envelope = None
            return refuse("mail", replies.SPOOL_FULL, reason="queue_minfree", client=ctx.client.describe(),
                          sender=sender, helo=ctx.client.helo, detail=f"size={declared}")
        ctx.queue_id = new_queue_id()
        result = await self.pipelines.access.mail(ctx, sender)
        ctx.envelope.direction = Direction.OUTBOUND if ctx.client.trusted else Direction.INBOUND
        if result.verdict.action is Action.CONTINUE:
            result = await self.pipelines.for_direction(ctx.envelope.direction).mail(ctx, sender)
        if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
            line = self._refuse("mail", result.verdict, ctx)
            ctx.envelope = None
            return line
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    def _room_for(self, size: int) -> bool:
        """Whether the spool can take a message of ``size`` bytes (0: unknown), as Postfix's smtpd checks.

        Refused when the free space is at most ``queue_minfree``, when the
        message would eat into it, or when it would take half of what is free
        (Postfix ``smtpd_check_size``): better 452 at MAIL than after the whole DATA.
        """
        try:
            free = self.intake.batcher.spool.free_bytes()
        except OSError:
            return True  # the commit will tell
        minfree = self.config.queue_minfree
        return free > minfree and size < free - minfree and size < free / 2

    async def handle_RCPT(self, server: AioSMTP, session: Session, envelope: AioEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        """Default-deny recipient check through the pipeline, plus smtpd_recipient_limit."""
        ctx = self._ctx(server)
        if ctx.envelope is None:
            return refuse("rcpt", replies.NEED_MAIL, reason="protocol", client=ctx.client.describe(),
                          recipients=[address], helo=ctx.client.helo)
        if _CONTROL.search(address):  # could never be sent on (RFC 5321 §4.1.2)
            return refuse("rcpt", replies.BAD_ADDRESS_SYNTAX, reason="bad_address", client=ctx.client.describe(),
                          sender=ctx.envelope.sender, recipients=[address], helo=ctx.client.helo)
        if len(envelope.rcpt_tos) >= self.config.smtpd_recipient_limit:
            return refuse("rcpt", replies.TOO_MANY_RECIPIENTS, reason="recipient_limit", client=ctx.client.describe(),
                          sender=ctx.envelope.sender, recipients=[address], helo=ctx.client.helo)
        result = await self.pipelines.access.rcpt(ctx, address)
        if result.verdict.action is Action.ACCEPT:
            content = await self.pipelines.for_direction(ctx.envelope.direction).rcpt(
                ctx, address, require_accept=False)
            if content.verdict.action in (Action.REJECT, Action.TEMPFAIL):
                result = content
        verdict = result.verdict
        if verdict.action is Action.ACCEPT:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            ctx.envelope.recipients.append(address)
            return str(replies.RECIPIENT_OK)
        assert verdict.reply is not None
        return self._refuse("rcpt", verdict, ctx, reply=replies.for_recipient(verdict.reply, address),
                            recipient=address, helo=ctx.client.helo or "")

    async def handle_VRFY(self, server: AioSMTP, session: Session, envelope: AioEnvelope,
                          address: str) -> str:
        """VRFY is disabled, as Postfix ``disable_vrfy_command = yes``."""
        return str(replies.VRFY_DISABLED)

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: AioEnvelope) -> str:
        """Run DATA policies, add Received:, commit to the spool, then say 250."""
        ctx = self._ctx(server)
        assert ctx.envelope is not None and ctx.queue_id is not None
        content = envelope.original_content or b""
        # From here only this frame holds the text: a large message is freed as soon as it is committed.
        envelope.original_content = envelope.content = None
        recipients = list(ctx.envelope.recipients)
        summary = (f"{ctx.queue_id}: client={ctx.client.describe()}"
                   f"{', tls=' + ctx.client.tls_version if ctx.client.tls_version else ''}"
                   f", from=<{ctx.envelope.sender}>, to={_addresses(recipients)}, size={len(content)}"
                   f"{', relay=permitted rule=' + ctx.client.trusted_rule if ctx.client.trusted_rule else ''}")
        # Ours included, as Postfix's cleanup counts them (hopcount_limit): a mail loop ends here.
        hops = received_count(content) + 1
        if hops >= self.config.hopcount_limit:
            return refuse("data", replies.TOO_MANY_HOPS, reason="hopcount", client=ctx.client.describe(),
                          summary=summary,
                          detail=f"{hops} Received fields with ours, limit {self.config.hopcount_limit}")
        pipeline = self.pipelines.for_direction(ctx.envelope.direction)
        result = await pipeline.data(ctx, content, skip=self.pipelines.switches.skipped(ctx.client, recipients))
        verdict = result.verdict
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            assert verdict.reply is not None
            return refuse("data", verdict.reply, reason=verdict.reason or "policy", client=ctx.client.describe(),
                          summary=summary, detail=verdict.detail)
        direction = ctx.envelope.direction.value
        if verdict.action is Action.DISCARD:
            metrics.MESSAGES_RECEIVED.labels(self.listener_name, direction, "discard").inc()
            log.info("%s, result=discard reason=%s", summary, verdict.reason)
            return str(replies.queued(ctx.queue_id))
        now = time.time()
        trace = received_header(ctx.client, by_host=self.config.myhostname, queue_id=ctx.queue_id,
                                recipients=recipients, extended=session.extended_smtp,
                                smtputf8=ctx.envelope.smtputf8, now=now)
        edits = result.headers
        if verdict.action is Action.HOLD and verdict.headers != HeaderEdit():
            edits += (verdict.headers,)  # held mail keeps what the holding policy added or removed
        outbound = ctx.envelope.direction is Direction.OUTBOUND
        message = await finish(content, trace, edits, signer=self.pipelines.signer if outbound else None,
                               queue_id=ctx.queue_id)
        size = message_size(message)
        entry = SpoolEntry(
            queue_id=ctx.queue_id, arrival=now, sender=ctx.envelope.sender,
            recipients=[RecipientStatus(address) for address in recipients], client=ctx.client,
            smtputf8=ctx.envelope.smtputf8, body_8bitmime=ctx.envelope.body_8bitmime,
            hold_reason=verdict.reason if verdict.action is Action.HOLD else None)
        state = QueueState.HOLD if verdict.action is Action.HOLD else QueueState.INCOMING
        try:
            await self.intake.commit(entry, message, state)
        except SpoolFullError as error:
            log.error("%s: cannot commit: %s", ctx.queue_id, error)
            return refuse("data", replies.SPOOL_FULL, reason="spool_full", client=ctx.client.describe(),
                          summary=summary, detail=str(error))
        except SpoolError as error:
            log.error("%s: cannot commit: %s", ctx.queue_id, error)
            return refuse("data", replies.INTERNAL_ERROR, reason="spool_error", client=ctx.client.describe(),
                          summary=summary, detail=str(error))
        del content, message  # committed: the worker reads it from the spool, or has its own bytes
        metrics.MESSAGES_RECEIVED.labels(self.listener_name, direction, state.value).inc()
        metrics.RECEIVED_BYTES.inc(size)
        log.info("%s, result=%s%s", summary, "hold" if state is QueueState.HOLD else "queued",
                 f" reason={verdict.reason} detail={verdict.detail}" if state is QueueState.HOLD else "")
        ctx.queue_id = None
        return str(replies.queued(entry.queue_id))

    async def handle_exception(self, error: Exception) -> str:
        """Any unexpected error: log it, answer ``451 4.3.0`` without internals."""
        if isinstance(error, TLSSetupException):
            # Logged by GatewaySMTP with the client and its certificate; aiosmtpd closes the connection.
            return str(replies.INTERNAL_ERROR)
        log.error("unexpected error in SMTP session: %r", error, exc_info=error)
        return refuse("session", replies.INTERNAL_ERROR, reason="internal_error", client="unknown")

    def factory_kwargs(self) -> dict[str, Any]:
        """aiosmtpd SMTP keyword arguments common to all connections of this handler."""
        return {"data_size_limit": self.config.message_size_limit, "enable_SMTPUTF8": True,
                "decode_data": False, "hostname": self.config.myhostname, "ident": "ESMTP",
                "timeout": self.config.smtpd_timeout}
