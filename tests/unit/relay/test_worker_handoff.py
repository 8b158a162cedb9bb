"""The relay worker's in-memory hand-over: messages committed straight into active/ are delivered from memory.

A real relay worker delivers to a real SMTP sink on 127.0.0.1 (tests/harness/smtp_sink.py);
the messages come through the commit step the SMTP handler uses (``Intake.commit``: reserve,
group commit, accept or notify) without an SMTP session in front, so the hand-over room can be
set small.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.config import build
from gateway.relay.client import ConnectionCache, SmtpClient
from gateway.relay.routing import Router
from gateway.relay.worker import RelayWorker
from gateway.resolver import make_resolver
from gateway.spool import QueueState, Spool
from gateway.spool.batcher import SpoolBatcher
from gateway.spool.intake import Intake
from gateway.tls.context import client_context
from tests.harness.smtp_sink import SmtpSink
from tests.harness.spool_helpers import make_entry

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hand-over\r\n\r\n" + (b"x" * 70 + b"\r\n") * 15


def make_worker(spool: Spool, sink_port: int, handoff_limit: int) -> RelayWorker:
    config = build(
        {"relayhost": [f"[127.0.0.1]:{sink_port}"], "mynetworks": ["127.0.0.1/32"], "spool_dir": str(spool.root)}
    )
    client = SmtpClient(
        config,
        client_context(config.smtp_tls_security_level, None, None, None),
        ConnectionCache(config.smtp_connection_cache_time_limit),
    )
    return RelayWorker(
        config, spool, Router(config, make_resolver(config)), client, SpoolBatcher(spool), handoff_limit=handoff_limit
    )


def test_reservations_are_bounded_and_given_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()

    async def scenario() -> None:
        worker = make_worker(spool, 1, handoff_limit=100)
        assert worker.reserve(60)
        assert not worker.reserve(60)  # would exceed the room
        worker.release(60)
        assert worker.reserve(60) and worker.reserve(40)
        assert not worker.reserve(1)
        big = make_worker(spool, 1, handoff_limit=100)
        assert big.reserve(500)  # one message larger than the room still goes when nothing else waits
        await worker.stop(0)
        assert not worker.reserve(1)  # a stopping worker takes nothing more

    asyncio.run(scenario())


def test_handed_over_and_spooled_messages_are_all_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    recipients = [f"user{n}@example.net" for n in range(12)]
    with SmtpSink() as sink:

        async def scenario() -> tuple[int, int]:
            worker = make_worker(spool, sink.port, handoff_limit=3 * len(MESSAGE))
            runner = asyncio.create_task(worker.run())
            notified: list[str] = []
            notify = worker.notify
            worker.notify = lambda entry: (notified.append(entry.queue_id), notify(entry))  # type: ignore[method-assign]
            intake = Intake(worker.batcher, worker)
            commits = [
                asyncio.create_task(
                    intake.commit(make_entry(arrival=time.time(), recipients=(r,)), MESSAGE, QueueState.INCOMING)
                )
                for r in recipients
            ]
            await asyncio.sleep(0)  # every commit has started: reserved its room or not
            handed = worker.handoff_bytes // len(MESSAGE)
            await asyncio.gather(*commits)
            await asyncio.to_thread(sink.wait_for_messages, len(recipients), 20)
            for _ in range(200):  # at most 10 s
                if not (worker.tasks or worker.batcher.busy):
                    break
                await asyncio.sleep(0.05)
            assert worker.handoff_bytes == 0
            await worker.stop()
            runner.cancel()
            return handed, len(notified)

        handed, spooled = asyncio.run(scenario())
        assert handed == 3 and spooled == 9  # the room held three; the rest waited on disk
        assert sink.delivered == {recipient: 1 for recipient in recipients}
        assert all(m.data == MESSAGE for m in sink.messages)
    for state in QueueState:
        assert spool.ids(state) == []
    assert list(spool.data_dir.iterdir()) == []
