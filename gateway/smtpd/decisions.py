"""The rules of MAIL and RCPT as functions of the configuration and the client: shared by the server and
``gateway explain``.

Each function answers for one step of :class:`~gateway.smtpd.handler.SmtpHandler`'s
``handle_MAIL`` / ``handle_RCPT``, in the order the handler runs them, with a
:class:`Refusal` (what the client is told, the log's reason, the rule that
decided) or None to go on. What depends on traffic rather than on
configuration (rate limits, the recipient count, free spool space) stays in the
handler; :mod:`gateway.ops.explain` says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway import reply as replies
from gateway.addresses import is_address_literal, split_mailbox
from gateway.envelope import Direction, Envelope
from gateway.pipeline.build import Pipelines
from gateway.pipeline.policy import PolicyContext
from gateway.reply import Reply
from gateway.safe_text import CONTROL
from gateway.verdict import Action, Verdict

# The Postfix restriction a policy refusal stands for, named in the log as rule=
POLICY_RULES = {"relay_denied": "reject_unauth_destination"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused MAIL or RCPT: the reply sent, the log's ``reason=``, the ``rule=`` that decided, more detail."""

    reply: Reply
    reason: str
    rule: str | None = None
    detail: str | None = None

    @classmethod
    def of(cls, verdict: Verdict, reply: Reply | None = None) -> Refusal:
        """A policy's refusal (``reply`` instead of the verdict's own, e.g. naming the recipient)."""
        assert verdict.reply is not None
        reason = verdict.reason or "policy"
        return cls(reply or verdict.reply, reason, POLICY_RULES.get(reason), verdict.detail)


@dataclass(frozen=True, slots=True)
class RecipientDecision:
    """What one RCPT address becomes: a refusal, or the recipients it is delivered to."""

    refusal: Refusal | None = None
    recipients: list[str] = field(default_factory=list)


def auth_required_refusal(pipelines: Pipelines, ctx: PolicyContext, auth_mode: str) -> Refusal | None:
    """``530 5.7.0`` at MAIL on a listener with ``auth = "required"`` until the client has logged in."""
    if ctx.client.auth_user is None and pipelines.auth is not None and auth_mode == "required":
        return Refusal(replies.AUTH_REQUIRED, "auth_required", "auth")
    return None


def sender_syntax_refusal(sender: str) -> Refusal | None:
    """``501 5.1.7`` for a sender that is not local@domain, or has control characters (``""`` is ``<>``)."""
    if not sender:
        return None
    try:
        split_mailbox(sender)
    except ValueError:
        return Refusal(replies.BAD_SENDER_SYNTAX, "bad_address")
    if CONTROL.search(sender):
        return Refusal(replies.BAD_SENDER_SYNTAX, "bad_address")
    return None


def sender_login_refusal(pipelines: Pipelines, ctx: PolicyContext, sender: str) -> Refusal | None:
    """``553 5.7.1`` for a sender the client's login does not own (``smtpd_sender_login_maps``)."""
    owners, login = pipelines.sender_logins, ctx.client.auth_user
    if login is not None and owners is not None and not owners.owns(login, sender):
        return Refusal(replies.sender_not_owned(sender, login), "sender_login_mismatch", "smtpd_sender_login_maps")
    return None


async def mail_policy_refusal(pipelines: Pipelines, ctx: PolicyContext, sender: str) -> Refusal | None:
    """Relay access, then the direction's pipeline, at MAIL; sets ``ctx.envelope.direction``.

    ``ctx.envelope`` must be the new transaction.
    """
    assert ctx.envelope is not None
    result = await pipelines.access.mail(ctx, sender)
    ctx.envelope.direction = Direction.OUTBOUND if ctx.client.trusted else Direction.INBOUND
    if result.verdict.action is Action.CONTINUE:
        result = await pipelines.for_direction(ctx.envelope.direction).mail(ctx, sender)
    if result.verdict.action in (Action.REJECT, Action.TEMPFAIL):
        return Refusal.of(result.verdict)
    return None


def recipient_syntax_refusal(address: str) -> Refusal | None:
    """``501 5.1.3`` for a recipient that could never be sent on, or names an invalid address literal."""
    if CONTROL.search(address) or (address.endswith("]") and not is_address_literal(address.rpartition("@")[2])):
        return Refusal(replies.BAD_ADDRESS_SYNTAX, "bad_address")
    return None


async def recipient_decision(pipelines: Pipelines, ctx: PolicyContext, address: str) -> RecipientDecision:
    """Relay access and the direction's pipeline at RCPT, then aliases and recipient validation.

    ``ctx.envelope`` must be the open transaction (its direction set at MAIL).
    """
    assert ctx.envelope is not None
    result = await pipelines.access.rcpt(ctx, address)
    if result.verdict.action is Action.ACCEPT:
        content = await pipelines.for_direction(ctx.envelope.direction).rcpt(ctx, address, require_accept=False)
        if content.verdict.action in (Action.REJECT, Action.TEMPFAIL):
            result = content
    verdict = result.verdict
    if verdict.action is not Action.ACCEPT:
        assert verdict.reply is not None
        return RecipientDecision(Refusal.of(verdict, replies.for_recipient(verdict.reply, address)))
    routing = pipelines.recipients
    if routing is None:
        return RecipientDecision(recipients=[address])
    resolution = await routing.resolve(address, validate=not ctx.client.trusted)
    if resolution.reply is not None:
        return RecipientDecision(
            Refusal(resolution.reply, resolution.reason or "policy", resolution.rule, resolution.detail)
        )
    return RecipientDecision(recipients=resolution.addresses)


def add_recipients(transaction: Envelope, address: str, results: list[str]) -> None:
    """Add what RCPT ``address`` became to the transaction: each result once, remembering ``address`` for it."""
    for result in results:
        if result not in transaction.recipients:  # two aliases of one mailbox: one copy (Postfix)
            transaction.recipients.append(result)
            if result != address:
                transaction.original_recipients[result] = address
