"""Hand the whole queue to a peer over SMTP: the last step of ``gateway drain`` (and of SIGTERM with ``drain_to``).

Every message left in the spool (``incoming/``, ``deferred/`` and ``hold/``;
the caller has requeued ``active/`` first) goes to the peer with its envelope:
the sender, the recipients not yet delivered or bounced, SMTPUTF8 and
8BITMIME, and the RFC 3461 parameters (RET, ENVID, and each recipient's
NOTIFY and ORCPT), passed when the peer offers DSN, as a gateway does. A
recipient the peer answers 2xx is marked delivered (``relay`` names the peer)
and its record rewritten; the message leaves the spool only once every
recipient has been taken, so a crash mid-way hands nothing twice that was
acknowledged and loses nothing that was not. A recipient the peer refuses stays
as it was: the message is kept and reported, never bounced here.

Held messages are handed on too (the volume must end empty): SMTP cannot say
"hold", so the peer's own checks decide again (a message the antivirus held is
held there again under the same config); the log line says ``held``.

A peer that cannot be reached (every address of ``--to`` refused, timed out, or a
4xx greeting or MAIL) stops the hand-off: what is left stays in the spool.
Messages go one at a time over one connection (the client's connection cache).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from gateway.errors import DeliveryError, NotInQueue, SpoolError
from gateway.relay.client import SmtpClient
from gateway.relay.dsn import dsn_options
from gateway.relay.routing import Destination, Router, RoutingError, TargetHost
from gateway.spool import QueueState, RecipientState, Spool, SpoolEntry, run_io
from gateway.values import NextHop

log = logging.getLogger("gateway.drain")

HANDED_STATES = (QueueState.INCOMING, QueueState.DEFERRED, QueueState.HOLD)


@dataclass(slots=True)
class HandoffReport:
    """What a hand-off did: messages ``handed`` whole, queue IDs ``left`` (with why), ``peer_down`` if it stopped."""

    handed: int = 0
    left: dict[str, str] = field(default_factory=dict)
    peer_down: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (written to ``state_dir/drain-result`` for ``gateway drain``)."""
        return {"handed": self.handed, "left": self.left, "peer_down": self.peer_down}


async def hand_off(spool: Spool, router: Router, client: SmtpClient, peer: NextHop) -> HandoffReport:
    """Send every queued message to ``peer``; remove each only after the peer took all its recipients.

    Returns:
        The report; ``left`` is empty when the spool was emptied.

    Raises:
        SpoolError: a record could not be rewritten (the message stays, with the recipients
            the peer took not yet marked: they may reach the peer twice, never zero times).
    """
    report = HandoffReport()
    destination = Destination(str(peer), (peer,), "drain")
    try:
        hosts = await router.hosts(destination)
    except RoutingError as error:
        report.peer_down = str(error.reply)
        report.left = queued_ids(spool, f"peer {peer}: {error.reply}")
        return report
    entries = await run_io(lambda: list(spool.entries(HANDED_STATES)))
    for entry in entries:
        if report.peer_down is not None:
            report.left[entry.queue_id] = f"peer down: {report.peer_down}"
            continue
        await _hand_one(spool, client, hosts, entry, report)
    return report


def queued_ids(spool: Spool, why: str) -> dict[str, str]:
    """Every queue ID a hand-off would take (incoming, deferred, held), each with ``why`` it stays."""
    return {queue_id: why for state in HANDED_STATES for queue_id in spool.ids(state)}


async def _hand_one(
    spool: Spool, client: SmtpClient, hosts: list[TargetHost], entry: SpoolEntry, report: HandoffReport
) -> None:
    pending = entry.pending()
    if pending:
        try:
            message = await run_io(spool.read_message, entry)
        except (OSError, SpoolError, ValueError) as error:
            report.left[entry.queue_id] = f"message unreadable: {error}"
            log.error("%s: not handed off: message unreadable: %s", entry.queue_id, error)
            return
        result = None
        last_error = ""
        for host in hosts:
            try:
                result = await client.deliver(
                    host,
                    entry.sender,
                    [r.address for r in pending],
                    message,
                    smtputf8=entry.smtputf8,
                    body_8bitmime=entry.body_8bitmime,
                    dsn=dsn_options(entry, pending),
                )
                break
            except DeliveryError as error:
                last_error = str(error.reply)
        if result is None:
            report.peer_down = last_error
            report.left[entry.queue_id] = f"peer down: {last_error}"
            log.error("%s: not handed off: %s", entry.queue_id, last_error)
            return
        now = time.time()
        refused = []
        for recipient in pending:
            reply = result.replies[recipient.address]
            held = " (held)" if entry.state is QueueState.HOLD else ""
            if reply.code < 300:
                recipient.state, recipient.relay, recipient.last_reply = (
                    RecipientState.DELIVERED,
                    result.host.describe(),
                    reply,
                )
                recipient.last_attempt = now
                log.info(
                    "%s: to=<%s>, relay=%s, status=handed-off%s (%s)",
                    entry.queue_id,
                    recipient.address,
                    result.host.describe(),
                    held,
                    reply,
                )
            else:
                refused.append(f"<{recipient.address}>: {reply}")
                log.error(
                    "%s: to=<%s>, relay=%s, not handed off%s (%s)",
                    entry.queue_id,
                    recipient.address,
                    result.host.describe(),
                    held,
                    reply,
                )
        if refused:
            await run_io(spool.write, entry)
            report.left[entry.queue_id] = "; ".join(refused)
            return
    try:
        await run_io(spool.remove, entry.queue_id, entry.state)
    except NotInQueue:
        pass  # already gone (an operator's queue delete)
    report.handed += 1
