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

from gateway.config import build
from gateway.envelope import ClientInfo
from gateway.pipelines import build_pipelines
from gateway.smtp_handler import SmtpHandler
from gateway.spool import QueueState, RecipientStatus, Spool, SpoolEntry, new_queue_id


def test_commit_finishes_and_hands_over_after_cancellation(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.create()
    started = threading.Event()
    real_commit = spool.commit

    def slow_commit(entry, message, state=QueueState.INCOMING):
        started.set()
        time.sleep(0.3)
        real_commit(entry, message, state)

    spool.commit = slow_commit  # type: ignore[method-assign]
    handed_over: list[str] = []
    handler = SmtpHandler(build({}), "smtp", build_pipelines(build({})), spool, lambda e: handed_over.append(e.queue_id))
    entry = SpoolEntry(queue_id=new_queue_id(), arrival=time.time(), sender="a@example.com",
                       recipients=[RecipientStatus("b@example.org")],
                       client=ClientInfo(ipaddress.ip_address("127.0.0.1"), 1, "smtp"),
                       message_size=0, message_sha256="")

    async def scenario() -> None:
        task = asyncio.create_task(handler._commit(entry, b"Subject: x\r\n\r\nbody\r\n", QueueState.INCOMING))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()  # what aiosmtpd does when the client goes away
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert task.cancelled()
        while handler.commits:  # the shielded commit goes on
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert handed_over == [entry.queue_id]
    stored = spool.read(entry.queue_id, QueueState.INCOMING)
    assert spool.read_message(stored) == b"Subject: x\r\n\r\nbody\r\n"
