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

import asyncio
import ipaddress
import logging
from typing import cast

from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope as AioEnvelope
from aiosmtpd.smtp import Session, TLSSetupException

from gateway import metrics
from gateway import reply as replies
from gateway.config import Config
from gateway.envelope import Envelope
from gateway.message import header_end, header_has_bare_cr, received_count
from gateway.networks import NetworkSet
from gateway.pipeline.build import Pipelines
from gateway.pipeline.policy import PolicyContext
from gateway.reply import Reply
from gateway.smtpd import decisions, sasl
from gateway.smtpd.accept import accept, transaction_summary
from gateway.smtpd.client import client_of, describe_tls
from gateway.smtpd.protocol import GatewaySMTP
from gateway.smtpd.rate_limits import ClientRates, RateSettings, process_rates
from gateway.smtpd.refusal import refuse
from gateway.smtpd.strict_input import content_violation
from gateway.spool import new_queue_id
from gateway.spool.files import has_room
from gateway.spool.intake import Intake
from gateway.verdict import Action

log = logging.getLogger("gateway.smtpd")


class SmtpHandler:
    """Handler object given to every :class:`GatewaySMTP` of one listener.

    Args:
        config: the gateway configuration.
        listener_name: the listener's name, recorded in ClientInfo and logs.
        pipelines: the access pipeline and the content pipelines per direction.
        intake: commits accepted mail and hands it to the relay worker.
        tls_mode: the listener's TLS mode, for the connection metric.
    """

    def __init__(
        self, config: Config, listener_name: str, pipelines: Pipelines, intake: Intake, tls_mode: str = "none"
    ) -> None:
        self.config = config
        self.listener_name = listener_name
        self.tls_mode = tls_mode
        self.pipelines = pipelines
        self.intake = intake
        self.sessions: set[GatewaySMTP] = set()
        self._rates: ClientRates | None = None
        self._rates_of: Config | None = None  # the config _rates was made from (a reload replaces it)
        self._exceptions: tuple[RateSettings, NetworkSet] = (RateSettings(), NetworkSet(()))
        self._exceptions_of: Config | None = None

    # ---- connection life ----

    async def start_session(self, server: GatewaySMTP) -> Reply | None:
        """Describe the client and run connect policies; a Reply refuses the connection."""
        client = client_of(server.transport, self.listener_name, peer=server.proxy_peer)
        ctx = PolicyContext(client=client)
        server.gateway_ctx = ctx  # on the protocol: aiosmtpd replaces the Session at STARTTLS
        self.sessions.add(server)
        metrics.CONNECTIONS.labels(self.listener_name, self.tls_mode).inc()
        metrics.SESSIONS_OPEN.labels(self.listener_name).inc()
        log.info(
            "connect from %s listener=%s%s",
            client.describe(),
            self.listener_name,
            f" tls={client.tls_version}" if client.tls_version else "",
        )
        result = await self.pipelines.access.connect(ctx)
        if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
            assert result.verdict.reply is not None
            metrics.CONNECTIONS_REFUSED.labels(self.listener_name).inc()
            reply = replies.SERVICE_UNAVAILABLE if result.verdict.reply.is_transient else result.verdict.reply
            refuse("connect", reply, reason=result.verdict.reason or "policy", client=client.describe())
            return reply
        rates = self.client_rates()
        if rates is not None and not await rates.allow("connection", client):
            metrics.CONNECTIONS_REFUSED.labels(self.listener_name).inc()
            reply = replies.too_many_connections_from(str(client.address))
            refuse("connect", reply, reason="connection_rate_limit", client=client.describe())
            return reply
        return None

    def connection_limit_exempt(self, host: str) -> bool:
        """Postfix ``smtpd_client_event_limit_exceptions`` for the per-client connection count: True for a
        client of mynetworks (or of ``auto_trust_networks``) when the list says ``mynetworks``, or of a network
        it lists. Asked at accept, before the session exists (the total ``smtpd_connection_limit`` still holds)."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if self._exceptions_of is not self.config:
            settings = RateSettings.from_config(self.config)
            self._exceptions = (settings, NetworkSet(settings.exempt_networks))
            self._exceptions_of = self.config
        settings, networks = self._exceptions
        trusts = getattr(self.pipelines.access.policies[0], "trusts_network_of", None)
        return settings.exempts(address, trusts is not None and bool(trusts(address)), networks)

    def client_rates(self) -> ClientRates | None:
        """The anvil-style rate counts of this process (:mod:`gateway.smtpd.rate_limits`); None when no limit is set."""
        if self._rates_of is not self.config:
            settings = RateSettings.from_config(self.config)
            self._rates = process_rates(settings) if settings.enabled else None
            self._rates_of = self.config
        return self._rates

    def end_session(self, server: GatewaySMTP) -> None:
        """Forget the session (called when the connection ends, however it ends)."""
        if server in self.sessions:
            metrics.SESSIONS_OPEN.labels(self.listener_name).dec()
        self.sessions.discard(server)
        ctx = getattr(server, "gateway_ctx", None)
        if ctx is not None:
            log.info("disconnect from %s", ctx.client.describe())

    @staticmethod
    def _refused(
        stage: str,
        refusal: decisions.Refusal,
        ctx: PolicyContext,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        helo: str | None = None,
    ) -> str:
        """A refusal (a policy's, or one of :mod:`gateway.smtpd.decisions`), through the one seam
        (:func:`gateway.smtpd.refusal.refuse`); ``helo``: the name being refused at HELO/EHLO."""
        envelope = ctx.envelope
        return refuse(
            stage,
            refusal.reply,
            reason=refusal.reason,
            client=ctx.client.describe(),
            sender=sender if sender is not None else (envelope.sender if envelope is not None else None),
            recipients=[recipient] if recipient else (),
            helo=helo if helo is not None else ctx.client.helo,
            rule=refusal.rule,
            detail=refusal.detail,
        )

    @staticmethod
    def _ctx(server: AioSMTP) -> PolicyContext:
        return server.gateway_ctx  # type: ignore[attr-defined,no-any-return]

    def handle_STARTTLS(self, server: AioSMTP, session: Session, envelope: AioEnvelope) -> bool:
        """After a STARTTLS handshake: record TLS version, cipher and a verified client certificate."""
        client = self._ctx(server).client
        describe_tls(server.transport, client)
        client.helo = None
        client.auth_user = None  # RFC 3207 §4.2: nothing learnt before TLS is kept
        log.info(
            "STARTTLS from %s %s %s%s",
            client.describe(),
            client.tls_version,
            client.tls_cipher,
            f" cert_sha256={client.cert_sha256}" if client.cert_sha256 else "",
        )
        return True

    # ---- commands ----

    async def handle_EHLO(
        self, server: AioSMTP, session: Session, envelope: AioEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Record the EHLO name; advertise PIPELINING, ENHANCEDSTATUSCODES and, where offered, AUTH."""
        refusal = await self._greeted(server, session, "ehlo", hostname)
        if refusal is not None:
            return [refusal]
        lines = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        extensions = list(replies.EHLO_EXTENSIONS)
        if sasl.offered(self.auth_mode(), self.pipelines.auth, cast(GatewaySMTP, server).tls_active):
            extensions.append(replies.EHLO_AUTH)
        return lines[:1] + extensions + lines[1:]

    def auth_mode(self) -> str:
        """This listener's ``auth`` setting in the live config (``off``, ``optional``, ``required``)."""
        for listener in self.config.listeners:
            if listener.name == self.listener_name:
                return listener.auth
        return "off"

    async def authenticate(self, server: GatewaySMTP, arg: str) -> None:
        """One AUTH command (:func:`gateway.smtpd.sasl.authenticate`)."""
        await sasl.authenticate(
            server, arg, mode=self.auth_mode(), settings=self.pipelines.auth, authenticator=self.pipelines.authenticator
        )

    async def handle_HELO(self, server: AioSMTP, session: Session, envelope: AioEnvelope, hostname: str) -> str:
        """Record the HELO name."""
        return await self._greeted(server, session, "helo", hostname) or replies.helo_ok(server.hostname)

    async def _greeted(self, server: AioSMTP, session: Session, stage: str, hostname: str) -> str | None:
        """Run the HELO policies; the refusal line, or None with the name recorded."""
        ctx = self._ctx(server)
        result = await self.pipelines.access.helo(ctx, hostname)
        if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return self._refused(stage, decisions.Refusal.of(result.verdict), ctx, helo=hostname)
        session.host_name = hostname
        ctx.client.helo = hostname
        return None

    async def handle_MAIL(
        self, server: AioSMTP, session: Session, envelope: AioEnvelope, address: str, mail_options: list[str]
    ) -> str:
        """Check the sender and start a transaction; the queue ID is assigned here.

        The rules are :mod:`gateway.smtpd.decisions` (shared with ``gateway explain``), in this order,
        with the checks that depend on traffic (the message rate, free spool space) between them.
        """
        ctx = self._ctx(server)
        sender = "" if address == "<>" else address
        # the listener lookup only where [auth] is configured: most gateways have no AUTH at all
        refusal = (
            decisions.auth_required_refusal(self.pipelines, ctx, self.auth_mode())
            if self.pipelines.auth is not None
            else None
        ) or decisions.sender_syntax_refusal(sender)
        if refusal is not None:
            return self._refused("mail", refusal, ctx, sender=sender)
        rates = self.client_rates()
        if rates is not None and not await rates.allow("message", ctx.client):
            return refuse(
                "mail",
                replies.too_much_mail_from(str(ctx.client.address)),
                reason="message_rate_limit",
                client=ctx.client.describe(),
                sender=sender,
                helo=ctx.client.helo,
            )
        refusal = decisions.sender_login_refusal(self.pipelines, ctx, sender)
        if refusal is not None:
            return self._refused("mail", refusal, ctx, sender=sender)
        transaction = Envelope.from_mail(sender, mail_options, smtputf8=envelope.smtp_utf8)
        if not has_room(self.intake.batcher.spool.root, transaction.declared_size or 0, self.config.queue_minfree):
            return refuse(
                "mail",
                replies.SPOOL_FULL,
                reason="queue_minfree",
                client=ctx.client.describe(),
                sender=sender,
                helo=ctx.client.helo,
                detail=f"size={transaction.declared_size}",
            )
        dsn = cast(GatewaySMTP, server).dsn_mail
        transaction.dsn_ret, transaction.dsn_envid = dsn.ret, dsn.envid
        ctx.envelope = transaction
        ctx.queue_id = new_queue_id()
        refusal = await decisions.mail_policy_refusal(self.pipelines, ctx, sender)
        if refusal is not None:
            ctx.envelope = None
            return self._refused("mail", refusal, ctx, sender=sender)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(
        self, server: AioSMTP, session: Session, envelope: AioEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Default-deny recipient check (:mod:`gateway.smtpd.decisions`), plus the rate and smtpd_recipient_limit."""
        ctx = self._ctx(server)
        if ctx.envelope is None:
            return refuse(
                "rcpt",
                replies.NEED_MAIL,
                reason="protocol",
                client=ctx.client.describe(),
                recipients=[address],
                helo=ctx.client.helo,
            )
        refusal = decisions.recipient_syntax_refusal(address)
        if refusal is not None:
            return self._refused("rcpt", refusal, ctx, recipient=address)
        rates = self.client_rates()
        if rates is not None and not await rates.allow("recipient", ctx.client):
            return refuse(
                "rcpt",
                replies.too_many_recipients_from(str(ctx.client.address)),
                reason="recipient_rate_limit",
                client=ctx.client.describe(),
                sender=ctx.envelope.sender,
                recipients=[address],
                helo=ctx.client.helo,
            )
        if len(envelope.rcpt_tos) >= self.config.smtpd_recipient_limit:
            return refuse(
                "rcpt",
                replies.TOO_MANY_RECIPIENTS,
                reason="recipient_limit",
                client=ctx.client.describe(),
                sender=ctx.envelope.sender,
                recipients=[address],
                helo=ctx.client.helo,
            )
        decision = await decisions.recipient_decision(self.pipelines, ctx, address)
        if decision.refusal is not None:
            return self._refused("rcpt", decision.refusal, ctx, recipient=address)
        if self.pipelines.recipients is None:
            ctx.envelope.recipients.append(address)
        else:
            decisions.add_recipients(ctx.envelope, address, decision.recipients)
        dsn = cast(GatewaySMTP, server).dsn_rcpt
        if dsn.notify is not None or dsn.orcpt is not None:
            for final in decision.recipients:
                ctx.envelope.recipient_dsn.setdefault(final, (dsn.notify, dsn.orcpt))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    async def handle_VRFY(self, server: AioSMTP, session: Session, envelope: AioEnvelope, address: str) -> str:
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
        summary = transaction_summary(ctx, len(content))
        # Ours included, as Postfix's cleanup counts them (hopcount_limit): a mail loop ends here.
        head_end = header_end(content)  # found once for both header checks of this message
        hops = received_count(content, head_end) + 1
        if hops >= self.config.hopcount_limit:
            return refuse(
                "data",
                replies.TOO_MANY_HOPS,
                reason="hopcount",
                client=ctx.client.describe(),
                summary=summary,
                detail=f"{hops} Received fields with ours, limit {self.config.hopcount_limit}",
            )
        if header_has_bare_cr(content, head_end):
            # Sent on as a line end, it would split a field in two downstream: a header no check saw.
            return refuse(
                "data", replies.BARE_CR_IN_HEADER, reason="bare_cr", client=ctx.client.describe(), summary=summary
            )
        reader = cast(GatewaySMTP, server)
        violation = content_violation(
            has_nul=reader.message_has_nul,
            has_8bit=reader.message_has_8bit,
            strict_8bitmime=self.config.strict_8bitmime,
            declared_8bit=ctx.envelope.body_8bitmime or ctx.envelope.smtputf8,
        )
        if violation is not None:
            return refuse(
                "data", violation.reply, reason=violation.reason, client=ctx.client.describe(), summary=summary
            )
        owners, login = self.pipelines.sender_logins, ctx.client.auth_user
        if login is not None and owners is not None and owners.check_from_header:
            author = owners.unowned_author(login, content, head_end)
            if author is not None:
                return refuse(
                    "data",
                    replies.author_not_owned(author, login),
                    reason="from_login_mismatch",
                    client=ctx.client.describe(),
                    summary=summary,
                )
        pipeline = self.pipelines.for_direction(ctx.envelope.direction)
        result = await pipeline.data(ctx, content, skip=self.pipelines.switches.skipped(ctx.client, recipients))
        verdict = result.verdict
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            assert verdict.reply is not None
            return refuse(
                "data",
                verdict.reply,
                reason=verdict.reason or "policy",
                client=ctx.client.describe(),
                summary=summary,
                detail=verdict.detail,
            )
        if verdict.action is Action.DISCARD:
            metrics.MESSAGES_RECEIVED.labels(self.listener_name, ctx.envelope.direction.value, "discard").inc()
            log.info("%s, result=discard reason=%s", summary, verdict.reason)
            return str(replies.queued(ctx.queue_id))
        accepting = accept(
            ctx,
            content,
            result,
            listener=self.listener_name,
            config=self.config,
            signer=self.pipelines.signer,
            intake=self.intake,
            summary=summary,
            extended_smtp=session.extended_smtp,
        )
        del content  # accept() holds the text now, and lets go of it once committed
        return await accepting

    async def handle_exception(self, error: Exception) -> str:
        """Any unexpected error: log it, answer ``451 4.3.0`` without internals.

        The end of the stream before a whole command line (``asyncio.IncompleteReadError``) is the client
        leaving, not an error: a balancer's probe that closes right after its PROXY header sends both at once.
        aiosmtpd's ``connection_lost`` ends the session (logged as the disconnect); the reply goes nowhere.
        """
        if isinstance(error, TLSSetupException):
            # Logged by GatewaySMTP with the client and its certificate; aiosmtpd closes the connection.
            return str(replies.INTERNAL_ERROR)
        if isinstance(error, asyncio.IncompleteReadError):
            return str(replies.SERVICE_UNAVAILABLE)
        log.error("unexpected error in SMTP session: %r", error, exc_info=error)
        return refuse("session", replies.INTERNAL_ERROR, reason="internal_error", client="unknown")
