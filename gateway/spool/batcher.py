"""Group commit and batched removal: the event loop's side of the spool.

Sessions that finish DATA at about the same time share one trip to a spool
thread: while a batch is being written and fsynced, new commits wait in a
list, and the next batch takes all of them (up to ``max_batch``). Up to
``COMMIT_BATCHES_IN_FLIGHT`` batches run at once, so one can be written while
another waits for the disk. Each session still gets its 250 only after its own message is
durable. Removals after delivery are batched the same way (the relay worker has
usually moved the record out of ``active/`` at the next hop's 250 already,
:mod:`gateway.spool.marks`; the batch makes that durable and deletes the files). This trades a
little latency under no load (none: a lone commit goes at once) for far fewer
thread hops and directory fsyncs under load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.errors import SpoolError
from gateway.message import MessageText
from gateway.spool.commit import PendingCommit
from gateway.spool.entry import QueueState, SpoolEntry
from gateway.spool.store import Spool
from gateway.spool.threads import run_io

log = logging.getLogger("gateway.spool")

MAX_BATCH = 64  # messages per group commit; bounds a batch's latency
# Batches written at the same time: while one waits for its fsyncs the next can be written.
COMMIT_BATCHES_IN_FLIGHT = 2


class SpoolBatcher:
    """Runs the spool's commits and removals in batches (commits: up to two batches at once).

    Args:
        spool: the spool written to.
        max_batch: most messages (or removals) per batch.
        observe_commit: called with the seconds each successful commit took, from
            submission to durability (the gateway's ``gateway_spool_commit_duration_seconds``);
            the spool itself knows nothing of metrics.
    """

    def __init__(
        self, spool: Spool, max_batch: int = MAX_BATCH, observe_commit: Callable[[float], None] | None = None
    ) -> None:
        self.spool = spool
        self.max_batch = max_batch
        self.observe_commit = observe_commit
        self._commits: list[tuple[PendingCommit, float, asyncio.Future[None]]] = []
        self._removals: list[tuple[str, bool, asyncio.Future[None]]] = []
        self._commit_tasks: set[asyncio.Task[None]] = set()
        self._removal_task: asyncio.Task[None] | None = None

    def submit(
        self, entry: SpoolEntry, message: MessageText, state: QueueState = QueueState.INCOMING
    ) -> asyncio.Future[None]:
        """Queue a commit of a new message; the future is done when it is durable.

        The future's exception is :class:`SpoolFullError` or :class:`SpoolError`
        when the commit failed (nothing left on disk). The commit goes on if the
        caller stops waiting: shield the future when awaiting it from a session.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commits.append((PendingCommit(entry, message, state), time.monotonic(), future))
        if len(self._commit_tasks) < COMMIT_BATCHES_IN_FLIGHT:
            task = asyncio.create_task(self._run_commits(), name="spool-commit")
            self._commit_tasks.add(task)
            task.add_done_callback(self._commit_tasks.discard)
        return future

    async def commit(self, entry: SpoolEntry, message: MessageText, state: QueueState = QueueState.INCOMING) -> None:
        """Commit a new message durably (batched); see :meth:`submit` for the errors raised."""
        await asyncio.shield(self.submit(entry, message, state))

    def remove(self, queue_id: str, *, finished: bool = False) -> asyncio.Future[None]:
        """Queue the removal of a finished message from ``active/``; done when the removal is durable.

        ``finished``: :meth:`Spool.finish_record` has moved the record out of ``active/`` already;
        the directory fsync and the deletion of its files are left. A record that was already gone
        otherwise counts as removed (logged). On an I/O error the future's exception is
        :class:`SpoolError`, and the record may come back after a power loss (the message
        is then delivered again, never lost).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._removals.append((queue_id, finished, future))
        if self._removal_task is None:
            self._removal_task = asyncio.create_task(self._run_removals(), name="spool-remove")
        return future

    async def drain(self) -> None:
        """Wait until every queued commit and removal has finished (used at shutdown)."""
        while self.busy:
            await asyncio.gather(
                *self._commit_tasks, *(t for t in (self._removal_task,) if t is not None), return_exceptions=True
            )

    @property
    def busy(self) -> bool:
        """True while commits or removals are queued or running."""
        return bool(self._commit_tasks) or self._removal_task is not None

    async def _run_commits(self) -> None:
        while self._commits:
            batch, self._commits = self._commits[: self.max_batch], self._commits[self.max_batch :]
            try:
                await run_io(self.spool.commit_many, [pending for pending, _, _ in batch])
            except BaseException as error:  # a bug, or cancellation at loop shutdown: fail the batch
                for pending, _, _ in batch:
                    if pending.error is None:
                        pending.error = SpoolError(f"spool commit failed: {error!r}")
                if not isinstance(error, Exception):
                    raise
            finally:
                self._settle_commits(batch)

    def _settle_commits(self, batch: list[tuple[PendingCommit, float, asyncio.Future[None]]]) -> None:
        now = time.monotonic()
        for pending, queued_at, future in batch:
            if future.done():
                continue
            if pending.error is None:
                if self.observe_commit is not None:
                    self.observe_commit(now - queued_at)
                future.set_result(None)
            else:
                future.set_exception(pending.error)
                future.exception()  # a session that went away must not leave "never retrieved" noise

    async def _run_removals(self) -> None:
        state = QueueState.ACTIVE
        try:
            while self._removals:
                batch, self._removals = self._removals[: self.max_batch], self._removals[self.max_batch :]
                records = [queue_id for queue_id, done, _ in batch if not done]
                finished = [queue_id for queue_id, done, _ in batch if done]
                try:
                    missing = await run_io(self.spool.remove_many, records, state, finished)
                except OSError as error:
                    failure = SpoolError(f"cannot remove from the spool: {error.strerror}")
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                            future.exception()
                    continue
                for queue_id in missing:
                    log.warning("%s: record already gone from %s at removal", queue_id, state.value)
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._removal_task = None
