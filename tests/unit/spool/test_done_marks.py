"""gateway.spool.marks: a recipient's 2xx is in the kernel at once, and every reader of the record sees it (issue 17).

These run on a real spool directory; "a crash" is a new :class:`Spool` object over the same files
(what a restarted process sees: the page cache, without any fsync).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.errors import NotInQueue
from gateway.spool import QueueState, RecipientState, Spool
from gateway.spool.batcher import SpoolBatcher
from gateway.spool.marks import MARKS_DIR, marks_path
from tests.harness.spool_helpers import MESSAGE, files_under, make_entry

THREE = ("a@example.net", "b@example.net", "c@example.net")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    result = Spool(tmp_path / "spool")
    result.create()
    return result


def after_crash(spool: Spool) -> Spool:
    return Spool(spool.root)


def test_marked_recipients_read_back_as_delivered_after_a_crash(spool: Spool) -> None:
    entry = make_entry(recipients=THREE)
    spool.commit(entry, MESSAGE, QueueState.ACTIVE)
    spool.mark_delivered(entry.queue_id, [0])
    spool.mark_delivered(entry.queue_id, [2])
    restarted = after_crash(spool)
    restarted.recover()
    stored = restarted.read(entry.queue_id, QueueState.INCOMING)
    assert [r.state for r in stored.recipients] == [
        RecipientState.DELIVERED,
        RecipientState.PENDING,
        RecipientState.DELIVERED,
    ]
    assert [r.address for r in stored.pending()] == ["b@example.net"]
    assert f"{MARKS_DIR}/{entry.queue_id}.done" in files_under(restarted)  # kept until the record holds them


def test_rewriting_the_record_keeps_the_marks_and_deletes_their_file(spool: Spool) -> None:
    entry = make_entry(recipients=THREE)
    spool.commit(entry, MESSAGE, QueueState.ACTIVE)
    spool.mark_delivered(entry.queue_id, [1])
    stored = spool.read(entry.queue_id, QueueState.ACTIVE)
    stored.next_attempt = 1_800_000_000.0
    spool.update_and_move(stored, QueueState.DEFERRED)
    assert not os.path.exists(marks_path(spool, entry.queue_id))
    again = spool.read(entry.queue_id, QueueState.DEFERRED)
    assert [r.state for r in again.recipients] == [
        RecipientState.PENDING,
        RecipientState.DELIVERED,
        RecipientState.PENDING,
    ]


def test_a_mark_never_overrides_a_bounce_and_garbage_lines_are_ignored(spool: Spool) -> None:
    entry = make_entry(recipients=THREE)
    entry.recipients[0].state = RecipientState.BOUNCED
    spool.commit(entry, MESSAGE, QueueState.ACTIVE)
    # a torn tail (a power loss while extending the file) and indices the record does not have
    Path(marks_path(spool, entry.queue_id)).write_bytes(b"0\n2\n\x00\x00\n99\n-1\n1x\n")
    stored = spool.read(entry.queue_id, QueueState.ACTIVE)
    assert [r.state for r in stored.recipients] == [
        RecipientState.BOUNCED,
        RecipientState.PENDING,
        RecipientState.DELIVERED,
    ]


def test_a_marks_file_that_is_a_link_is_not_followed(spool: Spool, tmp_path: Path) -> None:
    entry = make_entry(recipients=THREE)
    spool.commit(entry, MESSAGE, QueueState.DEFERRED)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"0\n1\n2\n")
    os.symlink(elsewhere, marks_path(spool, entry.queue_id))
    stored = spool.read(entry.queue_id, QueueState.DEFERRED)
    assert [r.state for r in stored.recipients] == [RecipientState.PENDING] * 3


def test_a_finished_record_leaves_active_at_once_and_goes_at_recovery(spool: Spool) -> None:
    entry = make_entry(recipients=THREE[:2])
    spool.commit(entry, MESSAGE, QueueState.ACTIVE)
    spool.mark_delivered(entry.queue_id, [0])
    spool.finish_record(entry.queue_id)
    assert spool.ids(QueueState.ACTIVE) == []
    with pytest.raises(NotInQueue):
        spool.finish_record(entry.queue_id)
    # a crash now: the message is delivered to all; recovery deletes what is left of it
    crashed = after_crash(spool)
    report = crashed.recover()
    assert (report.requeued_active, report.removed_orphan_data, report.removed_done) == (0, 1, 2)
    assert files_under(crashed) == []


def test_batched_removal_of_finished_and_active_records(spool: Spool) -> None:
    early, late = make_entry(), make_entry(recipients=THREE)
    for entry in (early, late):
        spool.commit(entry, MESSAGE, QueueState.ACTIVE)
    spool.mark_delivered(late.queue_id, [0, 1])
    spool.finish_record(early.queue_id)

    async def remove_both() -> None:
        batcher = SpoolBatcher(spool)
        await asyncio.gather(batcher.remove(early.queue_id, finished=True), batcher.remove(late.queue_id))

    asyncio.run(remove_both())
    assert files_under(spool) == []


def test_recovery_keeps_marks_of_queued_messages_and_drops_orphans(spool: Spool) -> None:
    queued = make_entry(recipients=THREE)
    spool.commit(queued, MESSAGE, QueueState.DEFERRED)
    spool.mark_delivered(queued.queue_id, [2])
    orphan = make_entry().queue_id
    spool.mark_delivered(orphan, [0])
    (spool.root / MARKS_DIR / "stray").write_bytes(b"0\n")
    report = spool.recover()
    assert report.removed_done == 2
    assert sorted(os.listdir(spool.root / MARKS_DIR)) == [f"{queued.queue_id}.done"]
    assert spool.read(queued.queue_id, QueueState.DEFERRED).recipients[2].state is RecipientState.DELIVERED


def test_a_spool_made_before_marks_existed_still_reads_and_recovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    entry = make_entry()
    spool.commit(entry, MESSAGE, QueueState.DEFERRED)
    os.rmdir(spool.root / MARKS_DIR)
    assert spool.read(entry.queue_id, QueueState.DEFERRED).pending()
    assert spool.recover().removed_done == 0
