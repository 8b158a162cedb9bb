"""Delivery status notifications the relay worker queues (RFC 3464), and the RFC 3461 parameters it passes on.

* :func:`bounce`: one non-delivery notification for the recipients bounced in a
  pass, unless their NOTIFY leaves FAILURE out (RFC 3461 §4.1);
* :func:`send`: any DSN (failed, delayed, relayed) to the sender, committed to
  the spool through the batcher like received mail, never to the null sender
  or about a DSN, and about mail from an untrusted client only within the
  backscatter limit (:mod:`gateway.relay.dsn_rate`) when it is a bounce;
* :func:`dsn_options`: RET, ENVID, NOTIFY and ORCPT of a message for a next hop
  that offers DSN (the relay client and the drain hand-off pass them on).

The DSN is committed before the original's record is updated (the worker's
order), so a crash can duplicate a DSN but never lose one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import metrics
from gateway.config import Config
from gateway.errors import SpoolError
from gateway.message import FileText
from gateway.relay import replies
from gateway.relay.bounce import HEADER_SIZE_LIMIT, UNTRUSTED_HEADER_LIMIT, FailedRecipient, build_dsn, should_bounce
from gateway.relay.client import DsnOptions
from gateway.relay.dsn_rate import DsnRateLimit
from gateway.spool import RecipientStatus, SpoolEntry, new_queue_id
from gateway.spool.batcher import SpoolBatcher

log = logging.getLogger("gateway.relay")


@dataclass(frozen=True, slots=True)
class DsnContext:
    """What queuing a DSN needs: the config (``myhostname``), the batcher that commits it, the backscatter
    limit, and ``notify`` to hand the new DSN to the relay worker."""

    config: Config
    batcher: SpoolBatcher
    rate: DsnRateLimit
    notify: Callable[[SpoolEntry], None]


async def bounce(
    context: DsnContext, entry: SpoolEntry, message: bytes | FileText, recipients: list[RecipientStatus]
) -> bool:
    """Queue the non-delivery notification for ``recipients`` (bounced in this pass); False when it could
    not be queued (the caller keeps them for retry). Recipients whose NOTIFY leaves FAILURE out get none."""
    unwanted = [r for r in recipients if r.notify is not None and "FAILURE" not in r.notify]
    if unwanted:  # RFC 3461 §4.1: NOTIFY=NEVER, or a list without FAILURE
        log.info(
            "%s: no DSN for %s (NOTIFY=%s)",
            entry.queue_id,
            ", ".join(r.address for r in unwanted),
            ",".join(unwanted[0].notify or ()),
        )
        recipients = [r for r in recipients if r not in unwanted]
        if not recipients:
            return True
    return await send(
        context,
        entry,
        message,
        [reported(r, "failed") for r in recipients],
        "sender non-delivery notification",
        limited=True,
    )


async def send(
    context: DsnContext,
    entry: SpoolEntry,
    message: bytes | FileText,
    about: list[FailedRecipient],
    what: str,
    *,
    limited: bool = False,
) -> bool:
    """Queue one RFC 3464 DSN about ``about`` to the sender; False when it could not be queued.

    Never to the null sender or about a DSN; with ``limited``, about mail from an untrusted client
    only within the backscatter limit (:mod:`gateway.relay.dsn_rate`).
    """
    addresses = ", ".join(r.address for r in about)
    if not should_bounce(entry.sender, entry.is_bounce):
        log.info("%s: no DSN for %s (null sender or a DSN itself)", entry.queue_id, addresses)
        return True
    now = time.time()
    # From an untrusted client the sender may be forged: the DSN may be backscatter.
    untrusted = entry.client is not None and not entry.client.trusted
    if limited and untrusted and not context.rate.allow(entry.sender, now):
        log.info(
            "%s: no DSN for %s: <%s> got %d DSNs about mail from untrusted clients in the last %ds (backscatter limit)",
            entry.queue_id,
            addresses,
            entry.sender,
            context.rate.count,
            context.rate.period,
        )
        return True
    text = build_dsn(
        reporting_mta=context.config.myhostname,
        original_sender=entry.sender,
        original_queue_id=entry.queue_id,
        arrival=entry.arrival,
        recipients=about,
        original_message=message,
        now=now,
        envid=entry.dsn_envid,
        header_limit=UNTRUSTED_HEADER_LIMIT if untrusted else HEADER_SIZE_LIMIT,
    )
    notice = SpoolEntry(
        queue_id=new_queue_id(now),
        arrival=now,
        sender="",
        recipients=[RecipientStatus(entry.sender)],
        client=None,  # generated here
        is_bounce=True,
        smtputf8=entry.smtputf8,
        body_8bitmime=True,
    )
    try:
        await context.batcher.commit(notice, text)
    except SpoolError as error:
        log.error("%s: cannot queue the DSN (%s); kept for retry", entry.queue_id, error)
        return False
    if limited:
        metrics.BOUNCES.inc()  # non-delivery notifications only, not warnings or success notices
    log.info("%s: %s: %s", entry.queue_id, what, notice.queue_id)
    context.notify(notice)
    return True


def reported(recipient: RecipientStatus, action: str) -> FailedRecipient:
    """One recipient of a DSN (``failed``, ``delayed`` or ``relayed``): its ORCPT (RFC 3461) as the original
    recipient, else the RCPT address an alias rewrote."""
    original, original_type = recipient.original, "rfc822"
    if recipient.orcpt is not None:
        original_type, _, original = recipient.orcpt.partition(";")
    return FailedRecipient(
        recipient.address,
        recipient.last_reply or replies.FAILED_WITHOUT_REPLY,
        recipient.relay,
        action=action,
        original=original,
        original_type=original_type,
    )


def dsn_options(entry: SpoolEntry, recipients: list[RecipientStatus]) -> DsnOptions | None:
    """The RFC 3461 parameters of ``entry`` for these recipients, or None when the sender gave none."""
    per_recipient = {r.address: (r.notify, r.orcpt) for r in recipients if r.notify is not None or r.orcpt}
    if entry.dsn_ret is None and entry.dsn_envid is None and not per_recipient:
        return None
    return DsnOptions(entry.dsn_ret, entry.dsn_envid, per_recipient)
