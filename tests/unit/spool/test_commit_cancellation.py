"""A spool commit that has started survives the cancellation of handle_DATA.

aiosmtpd cancels the handler task when the client disconnects or times out; the
commit must still finish and the message must still be handed to the relay
worker (a duplicate is acceptable, a loss is not). The slow commit is the real
Spool.commit behind a short delay, so the cancellation lands mid-commit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import pytest

from gateway.envelope import ClientInfo
from gateway.spool import QueueState, RecipientStatus, Spool, SpoolEntry, new_queue_id
from gateway.spool.batcher import SpoolBatcher
from gateway.spool.intake import Intake
from tests.harness.spool_helpers import slowed


class RecordingIntake:
    """Stands in for the relay worker: records what it is handed (the worker has its own tests)."""

    def __init__(self, room: bool) -> None:
        self.room = room
        self.reserved = 0
        self.accepted: list[tuple[str, bytes]] = []
        self.notified: list[str] = []

    def reserve(self, size: int) -> bool:
        if self.room:
            self.reserved += size
        return self.room

    def release(self, size: int) -> None:
        self.reserved -= size

    def accept(self, entry: SpoolEntry, message: bytes) -> None:
        self.accepted.append((entry.queue_id, message))

    def notify(self, entry: SpoolEntry) -> None:
        self.notified.append(entry.queue_id)


@pytest.mark.parametrize("room", [True, False], ids=["handed-over-in-memory", "left-in-incoming"])
def test_commit_finishes_and_hands_over_after_cancellation(tmp_path, room):
    spool = Spool(tmp_path / "spool")
    spool.create()
    started = threading.Event()
    slowed(spool, 0.3, started)
    intake = RecordingIntake(room)
    committer = Intake(SpoolBatcher(spool), intake)
    entry = SpoolEntry(
        queue_id=new_queue_id(),
        arrival=time.time(),
        sender="a@example.com",
        recipients=[RecipientStatus("b@example.org")],
        client=ClientInfo(ipaddress.ip_address("127.0.0.1"), 1, "smtp"),
        message_size=0,
        message_sha256="",
    )

    async def scenario() -> None:
        task = asyncio.create_task(committer.commit(entry, b"Subject: x\r\n\r\nbody\r\n", QueueState.INCOMING))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()  # what aiosmtpd does when the client goes away
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert task.cancelled()
        for _ in range(200):  # the shielded commit goes on (at most 10 s)
            if not committer.commits:
                break
            await asyncio.sleep(0.05)
        assert not committer.commits

    asyncio.run(scenario())
    message = b"Subject: x\r\n\r\nbody\r\n"
    if room:
        assert intake.accepted == [(entry.queue_id, message)] and intake.notified == []
        assert intake.reserved == len(message)  # the worker gives it back after delivery
        state = QueueState.ACTIVE  # recovery moves it back to incoming/ after a crash
    else:
        assert intake.notified == [entry.queue_id] and intake.accepted == []
        state = QueueState.INCOMING
    stored = spool.read(entry.queue_id, state)
    assert spool.read_message(stored) == message
