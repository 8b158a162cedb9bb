"""``gateway explain``: what the running configuration would do with one message, in words, sending nothing.

No peer has it: Postfix's ``postmap -q`` answers for one table, ``smtpd -v``
for a live session. This walks one SMTP transaction through the server's own
code (the connect classification and HELO check of relay access, then
:mod:`gateway.smtpd.decisions` for MAIL and each RCPT, the alias tables and
recipient sources, the relay's routing) and prints, for each step, which rule
decided and the reply the client would get: who trusted or refused the client,
each recipient's alias expansion and validation, the direction and the
pipeline that would run, and each recipient's next hop.

What depends on traffic rather than configuration is not evaluated, and the
report says so: rate limits, the recipient count, free spool space, and the
content checks at DATA. Recipient verification (``reject_unverified_recipient``)
answers from its cache, and probes the next hop (up to ``RCPT TO``, never a
message) when it has no answer.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from gateway.config import Config
from gateway.envelope import ClientInfo, Envelope
from gateway.pipeline.policy import PolicyContext
from gateway.prepare import Prepared
from gateway.relay.client import ConnectionCache, SmtpClient
from gateway.relay.probe import probe_recipient
from gateway.relay.routing import Router, RoutingError
from gateway.reply import Reply
from gateway.resolver import LazyResolver
from gateway.smtpd import decisions
from gateway.verdict import Action


@dataclass(frozen=True, slots=True)
class Question:
    """The message to explain: who sends it, over which listener, from and to whom.

    Attributes:
        client: the client's IP address. listener: the listener's name (None: the first).
        cert_sha256: a verified client certificate's fingerprint (hex). login: an SMTP AUTH login
            (taken as logged in: no password is checked). helo: the HELO name.
    """

    client: str
    sender: str
    recipients: tuple[str, ...]
    listener: str | None = None
    cert_sha256: str | None = None
    login: str | None = None
    helo: str = "client.example"


@dataclass(slots=True)
class Report:
    """The walk's lines, and whether the message would be accepted for at least one recipient."""

    lines: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: bool = False

    def say(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


async def explain(config: Config, prepared: Prepared, question: Question) -> Report:
    """Walk ``question`` through the server's rules (module docstring); no message is sent, nothing is written.

    Args:
        config: the configuration. prepared: what :func:`gateway.prepare.prepare` built from it
            (``write_files=False``): the pipelines and the relay's TLS context.
        question: the message.

    Raises:
        ValueError: ``question.client`` is not an IP address.
    """
    pipelines = prepared.pipelines
    report = Report()
    listener = (
        next((item for item in config.listeners if item.name == question.listener), None)
        if question.listener
        else (config.listeners[0] if config.listeners else None)
    )
    client = ClientInfo(
        address=ipaddress.ip_address(question.client),
        port=0,
        listener=listener.name if listener else "-",
        cert_sha256=question.cert_sha256,
        auth_user=question.login,
    )
    ctx = PolicyContext(client=client)
    router = Router(config, LazyResolver(config))
    if pipelines.recipients is not None:  # verification probes as the server makes them
        relay_client = SmtpClient(config, prepared.client_tls, ConnectionCache(0))
        pipelines.recipients.attach_prober(functools.partial(probe_recipient, router, relay_client))
        if pipelines.recipients.verifier is not None:
            pipelines.recipients.verifier.cache.read_only = True  # explain writes nothing
    result = await pipelines.access.connect(ctx)
    if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
        return _refused(report, "connect", result.verdict.reply, result.verdict.reason)
    trust = (
        f"trusted by {client.trusted_rule or client.trusted_by}"
        if client.trusted
        else "not trusted (not in mynetworks, no listed client certificate, no login): "
        "it may send only to relay_domains"
    )
    report.say(f"client {client.address}: {trust}")
    result = await pipelines.access.helo(ctx, question.helo)
    if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
        return _refused(report, "HELO", result.verdict.reply, result.verdict.reason)
    client.helo = question.helo
    sender = question.sender
    refusal = (
        decisions.auth_required_refusal(pipelines, ctx, listener.auth if listener else "off")
        or decisions.sender_syntax_refusal(sender)
        or decisions.sender_login_refusal(pipelines, ctx, sender)
    )
    if refusal is None:
        ctx.envelope = Envelope(sender=sender)
        refusal = await decisions.mail_policy_refusal(pipelines, ctx, sender)
    if refusal is not None:
        return _refused(report, f"MAIL FROM:<{sender}>", refusal.reply, refusal.reason, refusal.rule)
    assert ctx.envelope is not None
    direction = ctx.envelope.direction
    names = [entry.policy.name for entry in pipelines.for_direction(direction).entries] or ["(no checks)"]
    report.say(
        f"MAIL FROM:<{sender}>: 250 2.1.0 Ok; {direction.value} mail, the {direction.value} pipeline "
        f"runs at DATA: {', '.join(names)}"
        + ("; DKIM-signed" if direction.value == "outbound" and pipelines.signer is not None else "")
    )
    for address in question.recipients:
        refusal = decisions.recipient_syntax_refusal(address)
        decision = (
            decisions.RecipientDecision(refusal)
            if refusal
            else await decisions.recipient_decision(pipelines, ctx, address)
        )
        if decision.refusal is not None:
            rule = f" rule={decision.refusal.rule}" if decision.refusal.rule else ""
            report.say(
                f"RCPT TO:<{address}>: {decision.refusal.reply} (reason={decision.refusal.reason}{rule}"
                + (f": {decision.refusal.detail}" if decision.refusal.detail else "")
                + ")"
            )
            continue
        report.accepted.append(address)
        becomes = (
            ""
            if decision.recipients == [address]
            else f", delivered to {', '.join(decision.recipients)} (virtual_alias_maps)"
        )
        report.say(f"RCPT TO:<{address}>: 250 2.1.5 Ok{becomes}")
        for final in decision.recipients:
            report.say(f"  {final}: next hop {_next_hop(router, final)}")
    if not report.accepted:
        report.refused = True
        report.say("result: refused (no recipient accepted; DATA would get 503 5.5.1 Error: need RCPT command)")
    else:
        report.say(
            f"result: accepted for {len(report.accepted)} of {len(question.recipients)} recipients "
            "(not evaluated: rate limits, the recipient limit, spool space, the checks at DATA)"
        )
    return report


def _refused(report: Report, step: str, reply: Reply | None, reason: str | None, rule: str | None = None) -> Report:
    report.refused = True
    report.say(f"{step}: {reply} (reason={reason or 'policy'}" + (f" rule={rule}" if rule else "") + ")")
    report.say("result: refused")
    return report


def _next_hop(router: Router, address: str) -> str:
    try:
        destination = router.destination_for(address)
    except RoutingError as error:
        return f"none: {error.reply}"
    if destination.label == "mx":
        return f"the MX hosts of {destination.name} (direct delivery)"
    source = "relayhost" if destination.hops == router.config.relayhost else "transport_maps"
    return f"{destination.name} ({source})"
