"""The relay worker: drains the spool to the next hops (Postfix qmgr + smtp).

* Freshly received messages are handed over in memory: the session reserves
  room (:meth:`RelayWorker.reserve`, bounded by ``HANDOFF_LIMIT_BYTES``) and
  commits the message straight into ``active/``; the worker then gets the
  record and the bytes (:meth:`RelayWorker.accept`) with no claim and no
  re-read. Without room it commits into ``incoming/`` and calls
  :meth:`RelayWorker.notify`. ``incoming/`` is also scanned every second
  (messages released or flushed by ``gateway queue``), and ``deferred/`` every
  ``queue_run_delay`` for records whose next attempt (their mtime) has come.
* Other messages are claimed by renaming their record into ``active/``; the pending
  recipients are grouped by destination and each group is delivered under a
  per-destination concurrency limit, hosts tried in order until one answers.
* Per recipient: 2xx → delivered (never tried again), 5xx → bounced, 4xx or
  no answer → deferred with backoff, until ``maximal_queue_lifetime``
  (``bounce_queue_lifetime`` for our own DSNs) has passed: then bounced.
* A 2xx reaches the kernel at once, before anything else runs on the event loop
  (:mod:`gateway.spool.marks`): the record leaves ``active/`` when it finished the
  message, else the recipients are marked done; a crash then repeats only the
  deliveries whose reply was still on its way (at most those in flight).
* Recipients bounced in this pass get one RFC 3464 DSN to the sender (never to
  ``<>``, never for a DSN). The DSN is committed before the original's record
  is updated, so a crash can duplicate a DSN but never lose one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from gateway import metrics
from gateway.config import Config
from gateway.errors import DeliveryError, SpoolError
from gateway.message import FileText
from gateway.relay import dsn, replies
from gateway.relay.backoff import is_expired, next_attempt
from gateway.relay.bounce import FailedRecipient
from gateway.relay.client import SmtpClient
from gateway.relay.dsn_rate import DsnRateLimit
from gateway.relay.routing import Destination, Router, RoutingError
from gateway.reply import Reply
from gateway.spool import QueueState, RecipientState, RecipientStatus, Spool, SpoolEntry, run_io
from gateway.spool.batcher import SpoolBatcher

log = logging.getLogger("gateway.relay")

INCOMING_SCAN_INTERVAL = 1.0  # seconds
HANDOFF_LIMIT_BYTES = 32 * 1024 * 1024  # messages held in memory for delivery; beyond it they wait on disk


class RelayWorker:
    """Delivers spooled mail; one per gateway process.

    Args:
        config: timing, lifetimes and concurrency limits.
        spool: the spool to drain.
        router: recipient → destination → hosts.
        client: performs single delivery attempts.
        batcher: batches the spool commits (DSNs) and removals.
        handoff_limit: bytes of handed-over messages held in memory at most.
    """

    def __init__(
        self,
        config: Config,
        spool: Spool,
        router: Router,
        client: SmtpClient,
        batcher: SpoolBatcher,
        handoff_limit: int = HANDOFF_LIMIT_BYTES,
    ) -> None:
        self.config = config
        self.spool = spool
        self.batcher = batcher
        self.handoff_limit = handoff_limit
        self.dsn_rate = DsnRateLimit()  # backscatter: DSNs per address about mail from untrusted clients
        # queue ID -> recipients delivered this pass to a next hop without DSN that asked NOTIFY=SUCCESS
        self.success_notices: dict[str, list[RecipientStatus]] = {}
        # queue ID -> the batched removal of a message whose record left active/ at its last 2xx
        self.early_removals: dict[str, asyncio.Future[None]] = {}
        self.handoff_bytes = 0
        self.router = router
        self.client = client
        self.inflight: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wakeup = asyncio.Event()
        self.pending_incoming: list[str] = []
        self.slots = asyncio.Semaphore(config.delivery_concurrency_limit)
        self.destination_slots: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(config.default_destination_concurrency_limit)
        )
        self.stopping = False

    def notify(self, entry: SpoolEntry) -> None:
        """Tell the worker of a message freshly committed into ``incoming/`` (called on the event loop)."""
        self.pending_incoming.append(entry.queue_id)
        self.wakeup.set()

    def reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes of hand-over room for a message about to be committed into ``active/``.

        False (nothing reserved) when the room is used up or the worker is stopping:
        commit into ``incoming/`` then. A reservation ends with :meth:`accept` or :meth:`release`.
        """
        if self.stopping or (self.handoff_bytes and self.handoff_bytes + size > self.handoff_limit):
            return False
        self.handoff_bytes += size
        return True

    def release(self, size: int) -> None:
        """Give back ``size`` bytes of hand-over room (a failed commit, or a message done with)."""
        self.handoff_bytes -= size

    def accept(self, entry: SpoolEntry, message: bytes) -> None:
        """Take a message committed into ``active/`` under a reservation of ``len(message)`` bytes.

        If the worker is stopping the record stays in ``active/`` and goes back to
        ``incoming/`` at the next start.
        """
        if self.stopping or entry.queue_id in self.inflight:
            self.release(len(message))
            return
        self.inflight.add(entry.queue_id)
        task = asyncio.create_task(self._process_accepted(entry, message), name=f"deliver-{entry.queue_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """Main loop until :meth:`stop`; never raises (errors are logged and retried)."""
        last_deferred_scan = 0.0
        last_incoming_scan = 0.0
        while not self.stopping:
            now = time.time()
            try:
                if now - last_incoming_scan >= INCOMING_SCAN_INTERVAL:
                    last_incoming_scan = now
                    self.pending_incoming.extend(await run_io(self.spool.ids, QueueState.INCOMING))
                if now - last_deferred_scan >= self.config.queue_run_delay:
                    last_deferred_scan = now
                    for queue_id in await run_io(self.spool.due_deferred, now):
                        self._start(queue_id, QueueState.DEFERRED)
                incoming, self.pending_incoming = self.pending_incoming, []
                for queue_id in incoming:
                    self._start(queue_id, QueueState.INCOMING)
                self.client.cache.sweep()
            except Exception:
                log.exception("relay worker scan failed; retrying")
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), INCOMING_SCAN_INTERVAL)
            except TimeoutError:
                pass

    def _start(self, queue_id: str, source: QueueState) -> None:
        if queue_id in self.inflight or self.stopping:
            return
        self.inflight.add(queue_id)
        task = asyncio.create_task(self._process(queue_id, source), name=f"deliver-{queue_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop scanning; let deliveries finish for ``timeout`` seconds, then cancel them.

        A cancelled delivery leaves its record in ``active/``; it goes back to
        ``incoming/`` at the next start.
        """
        self.stopping = True
        self.wakeup.set()
        if self.tasks:
            done, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cancelled %d deliveries in progress at shutdown", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self.client.cache.close()

    async def _process(self, queue_id: str, source: QueueState) -> None:
        try:
            async with self.slots:
                entry = await run_io(self.spool.claim, queue_id, source)
                if entry is None:
                    return
                try:
                    message = await run_io(self.spool.read_message, entry)
                except SpoolError as error:
                    log.error("%s: %s; moved to corrupt", entry.queue_id, error)
                    await run_io(self.spool.move, entry.queue_id, QueueState.ACTIVE, QueueState.CORRUPT)
                    return
                await self._deliver_claimed(entry, message)
        except Exception:
            log.exception("%s: could not process the queue entry", queue_id)
        finally:
            self.inflight.discard(queue_id)

    async def _process_accepted(self, entry: SpoolEntry, message: bytes) -> None:
        try:
            async with self.slots:
                await self._deliver_claimed(entry, message)
        except Exception:
            log.exception("%s: could not process the queue entry", entry.queue_id)
        finally:
            self.inflight.discard(entry.queue_id)
            self.release(len(message))

    async def _deliver_claimed(self, entry: SpoolEntry, message: bytes | FileText) -> None:
        try:
            await self._deliver_entry(entry, message)
        except Exception:
            removal = self.early_removals.pop(entry.queue_id, None)
            if removal is not None:  # every recipient was delivered and the record is out of active/ already
                log.exception("%s: delivery pass failed after its last delivery", entry.queue_id)
                await self._removed(entry, removal)
                return
            log.exception("%s: delivery pass failed; deferred for retry", entry.queue_id)
            await self._defer_after_error(entry)
        finally:
            self.early_removals.pop(entry.queue_id, None)

    async def _defer_after_error(self, entry: SpoolEntry) -> None:
        # Move the record as it is on disk (statuses of this pass may be half-made) out of active/.
        retry = next_attempt(
            time.time(),
            entry.arrival,
            entry.last_delay,
            self.config.minimal_backoff_time,
            self.config.maximal_backoff_time,
        )
        try:
            stored = await run_io(self.spool.read, entry.queue_id, QueueState.ACTIVE)
            stored.next_attempt, stored.last_delay = retry.at, retry.delay
            await run_io(self.spool.update_and_move, stored, QueueState.DEFERRED)
            return
        except (SpoolError, ValueError, OSError) as error:
            log.error("%s: cannot rewrite the record (%s); moving it unchanged", entry.queue_id, error)
        try:
            # A rename and a timestamp need no free blocks (a full spool): the record goes back
            # to deferred/ as it was, so at worst this pass's deliveries are repeated.
            await run_io(self.spool.defer_unchanged, entry.queue_id, retry.at)
        except (SpoolError, OSError):
            log.exception("%s: left in active/; it is retried at the next start", entry.queue_id)

    async def _deliver_entry(self, entry: SpoolEntry, message: bytes | FileText) -> None:
        was_pending = entry.pending()
        groups: dict[Destination, list[RecipientStatus]] = defaultdict(list)
        for recipient in was_pending:
            try:
                groups[self.router.destination_for(recipient.address)].append(recipient)
            except RoutingError as error:
                self._record(entry, [recipient], error.reply, None, "none")
        await asyncio.gather(
            *(
                self._deliver_group(entry, message, destination, recipients)
                for destination, recipients in groups.items()
            )
        )
        await self._finish(entry, message, was_pending)

    async def _deliver_group(
        self, entry: SpoolEntry, message: bytes | FileText, destination: Destination, recipients: list[RecipientStatus]
    ) -> None:
        async with self.destination_slots[destination.name]:
            with metrics.DELIVERY_DURATION.labels(destination.label).time():
                await self._attempt(entry, message, destination, recipients)

    async def _attempt(
        self, entry: SpoolEntry, message: bytes | FileText, destination: Destination, recipients: list[RecipientStatus]
    ) -> None:
        try:
            hosts = await self.router.hosts(destination)
        except RoutingError as error:
            self._record(entry, recipients, error.reply, None, destination.label)
            return
        last_reply = replies.NO_HOST_ANSWERED
        last_host = None
        for host in hosts:
            marked: list[RecipientStatus] = []  # in the transport's callback, at the host's 2xx

            def delivered_now(addresses: list[str], dsn_passed: bool, marked: list[RecipientStatus] = marked) -> None:
                accepted = set(addresses)
                marked.extend(r for r in recipients if r.address in accepted and not _wants_our_notice(r, dsn_passed))
                self._mark_done(entry, marked)

            try:
                result = await self.client.deliver(
                    host,
                    entry.sender,
                    [r.address for r in recipients],
                    message,
                    smtputf8=entry.smtputf8,
                    body_8bitmime=entry.body_8bitmime,
                    dsn=dsn.dsn_options(entry, recipients),
                    on_accepted=delivered_now,
                )
            except DeliveryError as error:
                assert isinstance(error.reply, Reply)
                log.info("%s: host %s refused to talk or failed: %s", entry.queue_id, host.describe(), error.reply)
                last_reply, last_host = error.reply, host.describe()
                continue
            now = time.time()
            for recipient in recipients:
                _settle(recipient, result.replies[recipient.address], host.describe(), now)
            # RFC 3461 §5.2.2.1: a next hop without DSN leaves the success notices to us
            notices = [
                r for r in recipients if r.state is RecipientState.DELIVERED and _wants_our_notice(r, result.dsn_passed)
            ]
            if notices:
                self.success_notices.setdefault(entry.queue_id, []).extend(notices)
            if not marked:  # the 2xx did not come through the transport callback (or was not a 2xx)
                self._mark_done(
                    entry,
                    [
                        r
                        for r in recipients
                        if r.state is RecipientState.DELIVERED and not _wants_our_notice(r, result.dsn_passed)
                    ],
                )
            for recipient in recipients:
                self._report(entry, recipient, destination.label, now)
            return
        self._record(entry, recipients, last_reply, last_host, destination.label)

    def _mark_done(self, entry: SpoolEntry, delivered: list[RecipientStatus]) -> None:
        """Make the 2xx of ``delivered`` reach the kernel now, with no await before it
        (:mod:`gateway.spool.marks`): the record goes to done/ when every recipient is delivered (or in
        ``delivered``, whose states may not be settled yet), else the recipients are marked. A recipient with
        a success notice to send is never in ``delivered``: its notice is committed first, at the end of the
        pass."""
        if not delivered:
            return
        done = {id(r) for r in delivered}  # by identity: two recipients may share an address
        try:
            if entry.queue_id not in self.success_notices and all(
                r.state is RecipientState.DELIVERED or id(r) in done for r in entry.recipients
            ):
                self.spool.finish_record(entry.queue_id)
                self.early_removals[entry.queue_id] = self.batcher.remove(entry.queue_id, finished=True)
            else:
                self.spool.mark_delivered(
                    entry.queue_id,
                    [index for index, r in enumerate(entry.recipients) if id(r) in done],
                )
        except (OSError, SpoolError) as error:
            log.warning(
                "%s: cannot mark %d recipient(s) delivered (%s); until this pass ends, a crash would "
                "deliver to them again",
                entry.queue_id,
                len(delivered),
                error,
            )

    def _record(
        self, entry: SpoolEntry, recipients: list[RecipientStatus], reply: Reply, relay: str | None, nexthop: str
    ) -> None:
        now = time.time()
        for recipient in recipients:
            _settle(recipient, reply, relay, now)
            self._report(entry, recipient, nexthop, now)

    @staticmethod
    def _report(entry: SpoolEntry, recipient: RecipientStatus, nexthop: str, now: float) -> None:
        status = {
            RecipientState.DELIVERED: "sent",
            RecipientState.BOUNCED: "bounced",
            RecipientState.DEFERRED: "deferred",
        }[recipient.state]
        metrics.RECIPIENTS.labels(recipient.state.value, nexthop).inc()
        log.info(
            "%s: to=<%s>, relay=%s, delay=%.2f, attempts=%d, status=%s (%s)",
            entry.queue_id,
            recipient.address,
            recipient.relay or "none",
            now - entry.arrival,
            recipient.attempts,
            status,
            recipient.last_reply,
        )

    async def _finish(self, entry: SpoolEntry, message: bytes | FileText, was_pending: list[RecipientStatus]) -> None:
        now = time.time()
        lifetime = self.config.bounce_queue_lifetime if entry.is_bounce else self.config.maximal_queue_lifetime
        deferred = [r for r in entry.recipients if r.state is RecipientState.DEFERRED]
        if deferred and is_expired(now, entry.arrival, lifetime):
            for recipient in deferred:
                recipient.state = RecipientState.BOUNCED
                log.info(
                    "%s: to=<%s>, status=expired, returned to sender (%s)",
                    entry.queue_id,
                    recipient.address,
                    recipient.last_reply,
                )
        bounced_now = [r for r in was_pending if r.state is RecipientState.BOUNCED]
        if bounced_now:
            await self._bounce(entry, message, bounced_now)
        relayed = self.success_notices.pop(entry.queue_id, [])
        if relayed:
            await self._send_dsn(entry, message, [dsn.reported(r, "relayed") for r in relayed], "success notice")
        if entry.pending() and self._delay_warning_due(entry, now):
            entry.delay_warned = True  # one warning per message, whatever it covers
            delayed = [r for r in entry.pending() if r.notify is None or "DELAY" in r.notify]
            if delayed:
                await self._send_dsn(entry, message, [dsn.reported(r, "delayed") for r in delayed], "delay warning")
        if entry.pending():
            retry = next_attempt(
                now, entry.arrival, entry.last_delay, self.config.minimal_backoff_time, self.config.maximal_backoff_time
            )
            entry.next_attempt, entry.last_delay = retry.at, retry.delay
            await run_io(self.spool.update_and_move, entry, QueueState.DEFERRED)
            log.info(
                "%s: deferred, %d recipient(s) left, next attempt in %.0fs",
                entry.queue_id,
                len(entry.pending()),
                retry.delay,
            )
        else:
            removal = self.early_removals.pop(entry.queue_id, None)
            await self._removed(entry, removal or self.batcher.remove(entry.queue_id))

    @staticmethod
    async def _removed(entry: SpoolEntry, removal: asyncio.Future[None]) -> None:
        """Wait for the batched removal of a finished message (its record is out of active/: a failure is logged)."""
        try:
            await removal
            log.info("%s: removed", entry.queue_id)
        except SpoolError as error:
            log.error("%s: %s; it may be delivered again", entry.queue_id, error)

    def _delay_warning_due(self, entry: SpoolEntry, now: float) -> bool:
        """``delay_warning_time`` has passed since arrival and this message has had no warning yet."""
        wait = self.config.delay_warning_time
        return bool(wait) and not entry.delay_warned and not entry.is_bounce and now - entry.arrival >= wait

    async def _bounce(self, entry: SpoolEntry, message: bytes | FileText, recipients: list[RecipientStatus]) -> None:
        if not await dsn.bounce(self._dsn_context(), entry, message, recipients):
            for recipient in recipients:  # the DSN could not be queued: kept for retry
                recipient.state = RecipientState.DEFERRED

    async def _send_dsn(
        self, entry: SpoolEntry, message: bytes | FileText, reported: list[FailedRecipient], what: str
    ) -> None:
        await dsn.send(self._dsn_context(), entry, message, reported, what)

    def _dsn_context(self) -> dsn.DsnContext:
        # made per call: a reload replaces the config, and the app shares out dsn_rate after construction
        return dsn.DsnContext(self.config, self.batcher, self.dsn_rate, self.notify)


def _wants_our_notice(recipient: RecipientStatus, dsn_passed: bool) -> bool:
    """RFC 3461 §5.2.2.1: a next hop without DSN leaves ``recipient``'s NOTIFY=SUCCESS notice to us."""
    return not dsn_passed and recipient.notify is not None and "SUCCESS" in recipient.notify


def _settle(recipient: RecipientStatus, reply: Reply, relay: str | None, now: float) -> None:
    """Record one attempt's ``reply`` for ``recipient``: 2xx delivered, 5xx bounced, else deferred."""
    recipient.attempts += 1
    recipient.last_attempt = now
    recipient.last_reply = reply
    recipient.relay = relay
    if reply.is_success:
        recipient.state = RecipientState.DELIVERED
    elif reply.is_permanent:
        recipient.state = RecipientState.BOUNCED
    else:
        recipient.state = RecipientState.DEFERRED
