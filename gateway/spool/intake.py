"""The intake: how an accepted message becomes the relay worker's, durably, in one call.

The commit-and-hand-over protocol, once: with room at the worker
(:meth:`DeliveryIntake.reserve`) a message is committed straight into
``active/`` and its bytes go to the worker in memory when the commit is done;
otherwise (no room, a large message in pieces, a held one) it is committed into
``incoming/`` (or ``hold/``) and the worker is told of it. The commit is a
group commit (:mod:`gateway.spool.batcher`) and is shielded: a client that goes
away mid-commit cannot stop it, so a message whose commit started is always
delivered, even if its 250 never reached the client (a duplicate is
acceptable, a loss is not).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.message import MessageText
from gateway.spool.batcher import SpoolBatcher
from gateway.spool.entry import QueueState, SpoolEntry


class DeliveryIntake(Protocol):
    """What the intake needs of the relay worker (:class:`gateway.relay.worker.RelayWorker`)."""

    def reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes of in-memory hand-over room; False when there is none."""

    def release(self, size: int) -> None:
        """Give back a reservation whose commit failed."""

    def accept(self, entry: SpoolEntry, message: bytes) -> None:
        """Take a message committed into ``active/`` under a reservation."""

    def notify(self, entry: SpoolEntry) -> None:
        """Learn of a message committed into ``incoming/``."""


class Intake:
    """Commits accepted messages and hands them to the worker.

    Args:
        batcher: the group commit of the spool.
        worker: the relay worker (:class:`DeliveryIntake`).

    Attributes:
        commits: the commits still running (shutdown waits for them).
    """

    def __init__(self, batcher: SpoolBatcher, worker: DeliveryIntake) -> None:
        self.batcher = batcher
        self.worker = worker
        self.commits: set[asyncio.Future[None]] = set()

    async def commit(self, entry: SpoolEntry, message: MessageText, state: QueueState) -> None:
        """Commit ``message`` durably in ``state`` (``INCOMING`` or ``HOLD``) and hand it to the worker.

        ``message`` as bytes may be handed over in memory; as pieces (a large
        message) it waits in ``incoming/`` and the worker reads it from the spool.

        Raises:
            SpoolFullError: no room on the spool's file system (nothing left behind).
            SpoolError: the commit failed otherwise.
        """
        handed_over = state is QueueState.INCOMING and isinstance(message, bytes) and self.worker.reserve(len(message))
        commit = self.batcher.submit(entry, message, QueueState.ACTIVE if handed_over else state)
        self.commits.add(commit)

        def finished(future: asyncio.Future[None]) -> None:
            self.commits.discard(future)
            succeeded = not future.cancelled() and future.exception() is None
            if handed_over:
                assert isinstance(message, bytes)
                if succeeded:
                    self.worker.accept(entry, message)
                else:
                    self.worker.release(len(message))
            elif succeeded and state is QueueState.INCOMING:
                self.worker.notify(entry)

        commit.add_done_callback(finished)
        # The shield keeps the commit (and the hand-off) running if the client goes away.
        await asyncio.shield(commit)
