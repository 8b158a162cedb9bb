"""An accepted message to the spool: Received:, edits and DKIM, the spool record, the commit, the log line.

The part of DATA after the policies said yes (or hold): :func:`gateway.pipeline.finish.finish`
assembles the message, :class:`gateway.spool.intake.Intake` commits it and hands
it to the relay worker; the counters and the transaction's summary line say
``result=queued`` (or ``hold``); a spool error becomes ``452 4.3.1`` or
``451 4.3.0`` through :func:`gateway.smtpd.refusal.refuse`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from gateway import metrics
from gateway import reply as replies
from gateway.config import Config
from gateway.envelope import Direction, Envelope
from gateway.errors import SpoolError, SpoolFullError
from gateway.message import FileText, message_size
from gateway.pipeline.finish import finish
from gateway.pipeline.policy import PolicyContext
from gateway.pipeline.received import received_header
from gateway.pipeline.runner import StageResult
from gateway.smtpd.refusal import refuse
from gateway.spool import QueueState, RecipientStatus, SpoolEntry
from gateway.spool.intake import Intake
from gateway.verdict import Action, HeaderEdit

if TYPE_CHECKING:
    from gateway.dkim.signer import DkimSigner  # loaded only by gateways that sign

log = logging.getLogger("gateway.smtpd")


def transaction_summary(ctx: PolicyContext, size: int) -> str:
    """The transaction's log line up to its result: queue ID, client, TLS, sender, recipients, size, relay rule."""
    client, envelope = ctx.client, ctx.envelope
    assert envelope is not None
    recipients = ",".join(f"<{r}>" for r in envelope.recipients)
    return (
        f"{ctx.queue_id}: client={client.describe()}{', tls=' + client.tls_version if client.tls_version else ''}"
        f", from=<{envelope.sender}>, to={recipients}, size={size}"
        f"{', relay=permitted rule=' + client.trusted_rule if client.trusted_rule else ''}"
    )


async def accept(
    ctx: PolicyContext,
    content: bytes | FileText,
    result: StageResult,
    *,
    listener: str,
    config: Config,
    signer: DkimSigner | None,
    intake: Intake,
    summary: str,
    extended_smtp: bool,
) -> str:
    """Spool the message ``content`` the DATA policies accepted (``result``); the reply line to send.

    Args:
        ctx: the transaction (client, envelope, queue ID); its queue ID is cleared once committed.
        content: the message as received (bytes, or a large one in its file).
        result: the DATA stage's outcome (verdict ACCEPT/CONTINUE or HOLD, and header edits).
        listener: the listener's name (metrics).
        config: for ``myhostname`` in Received:.
        signer: the DKIM signer, used for outbound mail.
        intake: commits and hands over.
        summary: the transaction's log line so far.
        extended_smtp: the client said EHLO (Received: ``with ESMTP``).

    Returns:
        ``250 2.0.0 Ok: queued as ID``, or the refusal when the spool cannot take it.
    """
    assert ctx.envelope is not None and ctx.queue_id is not None
    verdict, recipients, direction = result.verdict, list(ctx.envelope.recipients), ctx.envelope.direction.value
    now = time.time()
    trace = received_header(
        ctx.client,
        by_host=config.myhostname,
        queue_id=ctx.queue_id,
        recipients=recipients,
        extended=extended_smtp,
        smtputf8=ctx.envelope.smtputf8,
        now=now,
    )
    edits = result.headers
    if verdict.action is Action.HOLD and verdict.headers != HeaderEdit():
        edits += (verdict.headers,)  # held mail keeps what the holding policy added or removed
    outbound = ctx.envelope.direction is Direction.OUTBOUND
    message = await finish(content, trace, edits, signer=signer if outbound else None, queue_id=ctx.queue_id)
    size = message_size(message)
    entry = SpoolEntry(
        queue_id=ctx.queue_id,
        arrival=now,
        sender=ctx.envelope.sender,
        recipients=[_recipient_status(ctx.envelope, address) for address in recipients],
        client=ctx.client,
        dsn_ret=ctx.envelope.dsn_ret,
        dsn_envid=ctx.envelope.dsn_envid,
        smtputf8=ctx.envelope.smtputf8,
        body_8bitmime=ctx.envelope.body_8bitmime,
        hold_reason=verdict.reason if verdict.action is Action.HOLD else None,
    )
    state = QueueState.HOLD if verdict.action is Action.HOLD else QueueState.INCOMING
    try:
        await intake.commit(entry, message, state)
    except SpoolFullError as error:
        log.error("%s: cannot commit: %s", ctx.queue_id, error)
        return refuse(
            "data",
            replies.SPOOL_FULL,
            reason="spool_full",
            client=ctx.client.describe(),
            summary=summary,
            detail=str(error),
        )
    except SpoolError as error:
        log.error("%s: cannot commit: %s", ctx.queue_id, error)
        return refuse(
            "data",
            replies.INTERNAL_ERROR,
            reason="spool_error",
            client=ctx.client.describe(),
            summary=summary,
            detail=str(error),
        )
    del content, message  # committed: the worker reads it from the spool, or has its own bytes
    metrics.MESSAGES_RECEIVED.labels(listener, direction, state.value).inc()
    metrics.RECEIVED_BYTES.inc(size)
    log.info(
        "%s, result=%s%s",
        summary,
        "hold" if state is QueueState.HOLD else "queued",
        f" reason={verdict.reason} detail={verdict.detail}" if state is QueueState.HOLD else "",
    )
    ctx.queue_id = None
    return str(replies.queued(entry.queue_id))


def _recipient_status(transaction: Envelope, address: str) -> RecipientStatus:
    """A new spool recipient, with the RCPT address it came from and its DSN parameters when there are any."""
    if not transaction.original_recipients and not transaction.recipient_dsn:
        return RecipientStatus(address)
    notify, orcpt = transaction.recipient_dsn.get(address, (None, None))
    return RecipientStatus(address, original=transaction.original_recipients.get(address), notify=notify, orcpt=orcpt)
