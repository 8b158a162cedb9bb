"""Group commit and batched removal: Spool.commit_many / remove_many and the loop-side SpoolBatcher.

Each message of a batch succeeds or fails on its own, a failed one leaves no
file, and the directory fsyncs are shared by the batch (counted through a
wrapper around os.fsync: the real fsync still runs).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

import gateway.spool.files as files
from gateway.errors import SpoolError, SpoolFullError
from gateway.spool import QueueState, Spool
from gateway.spool.batcher import SpoolBatcher
from gateway.spool.commit import PendingCommit
from tests.harness.spool_helpers import MESSAGE, files_under, make_entry, slowed


@pytest.fixture(params=["fsync", "syncfs"])
def spool(tmp_path: Path, request: pytest.FixtureRequest) -> Spool:
    result = Spool(tmp_path / "spool", request.param)
    result.create()
    return result


@pytest.fixture
def fsync_spool(tmp_path: Path) -> Spool:
    result = Spool(tmp_path / "spool", "fsync")
    result.create()
    return result


@pytest.fixture
def fsync_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return calls


def message_files(spool: Spool, pending: PendingCommit) -> list[str]:
    queue_id = pending.entry.queue_id
    return [f"data/{queue_id}.eml", f"{pending.state.value}/{queue_id}.json"]


def test_commit_many_shares_the_directory_fsyncs(fsync_spool: Spool, fsync_count: list[int]) -> None:
    spool = fsync_spool
    batch = [PendingCommit(make_entry(), MESSAGE + bytes([65 + n])) for n in range(10)]
    batch.append(PendingCommit(make_entry(), MESSAGE, QueueState.HOLD))
    sent = {pending.entry.queue_id: pending.message for pending in batch}
    spool.commit_many(batch)
    assert [p.error for p in batch] == [None] * 11
    assert all(pending.message == b"" for pending in batch)  # written: not kept as long as the batch
    # one fsync per message file and per record, then data/ once, incoming/ once and hold/ once
    assert len(fsync_count) == 2 * 11 + 3
    for pending in batch:
        stored = spool.read(pending.entry.queue_id, pending.state)
        assert spool.read_message(stored) == sent[pending.entry.queue_id]
        assert stored.message_size == len(sent[pending.entry.queue_id])


def test_one_failed_message_does_not_fail_the_batch(spool: Spool) -> None:
    taken = make_entry()
    spool.commit(taken, MESSAGE)
    before = set(files_under(spool))
    good = [PendingCommit(make_entry(), MESSAGE) for _ in range(3)]
    clash = PendingCommit(make_entry(taken.queue_id), b"another message\r\n")  # its data file exists
    batch = [good[0], clash, good[1], good[2]]
    spool.commit_many(batch)
    assert isinstance(clash.error, SpoolError) and not isinstance(clash.error, SpoolFullError)
    assert [p.error for p in good] == [None, None, None]
    expected = before | {name for p in good for name in message_files(spool, p)}
    assert set(files_under(spool)) == expected
    assert spool.read_message(spool.read(taken.queue_id, QueueState.INCOMING)) == MESSAGE  # untouched


def test_failed_publish_of_one_message_leaves_nothing_of_it(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [PendingCommit(make_entry(), MESSAGE) for _ in range(3)]
    victim = batch[1].entry.queue_id
    real_rename = os.rename

    def rename(source: os.PathLike[str], target: os.PathLike[str]) -> None:
        if victim in str(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    spool.commit_many(batch)
    monkeypatch.undo()
    assert isinstance(batch[1].error, SpoolFullError)
    assert batch[0].error is None and batch[2].error is None
    assert files_under(spool) == sorted(message_files(spool, batch[0]) + message_files(spool, batch[2]))


def test_failed_data_directory_fsync_fails_the_whole_batch(fsync_spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = fsync_spool
    real_fsync = os.fsync
    data_dir_inode = os.stat(spool.data_dir).st_ino

    def fsync(fd: int) -> None:
        if os.fstat(fd).st_ino == data_dir_inode:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    batch = [PendingCommit(make_entry(), MESSAGE) for _ in range(4)]
    spool.commit_many(batch)
    monkeypatch.undo()
    assert all(isinstance(p.error, SpoolError) for p in batch)
    assert files_under(spool) == []


def test_a_failed_file_fsync_fails_only_its_message(fsync_spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    # An EIO from one message's fsync (a writeback error) fails that message alone and leaves nothing of it.
    spool = fsync_spool
    batch = [PendingCommit(make_entry(), MESSAGE + bytes([65 + n])) for n in range(12)]
    victim = batch[5]
    victim_inode: list[int] = []
    real_write = files.create_and_write

    def create_and_write(path: str, data: bytes) -> int:
        fd = real_write(path, data)
        if path.endswith(f"{victim.entry.queue_id}.eml"):
            victim_inode.append(os.fstat(fd).st_ino)
        return fd

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.fstat(fd).st_ino in victim_inode:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(files, "create_and_write", create_and_write)
    monkeypatch.setattr(os, "fsync", fsync)
    spool.commit_many(batch)
    monkeypatch.undo()
    assert isinstance(victim.error, SpoolError) and not isinstance(victim.error, SpoolFullError)
    survivors = [p for p in batch if p is not victim]
    assert [p.error for p in survivors] == [None] * 11
    assert files_under(spool) == sorted(name for p in survivors for name in message_files(spool, p))


def test_remove_many_removes_records_and_messages_with_one_directory_fsync(
    fsync_spool: Spool, fsync_count: list[int]
) -> None:
    spool = fsync_spool
    entries = [make_entry() for _ in range(5)]
    for entry in entries:
        spool.commit(entry, MESSAGE, QueueState.ACTIVE)
    kept = make_entry()
    spool.commit(kept, MESSAGE, QueueState.ACTIVE)
    fsync_count.clear()
    missing = spool.remove_many([e.queue_id for e in entries] + ["0000000000000AAAAAAAAAAAA"], QueueState.ACTIVE)
    assert missing == ["0000000000000AAAAAAAAAAAA"]
    assert len(fsync_count) == 1
    assert files_under(spool) == sorted(message_files(spool, PendingCommit(kept, MESSAGE, QueueState.ACTIVE)))


def test_syncfs_method_makes_two_syncfs_calls_per_batch_and_no_fsync(
    tmp_path: Path, fsync_count: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool", "syncfs")
    spool.create()
    calls: list[int] = []
    real_syncfs = files.syncfs

    def counting_syncfs(fd: int) -> None:
        calls.append(fd)
        real_syncfs(fd)  # the real syncfs(2) still runs

    monkeypatch.setattr(files, "syncfs", counting_syncfs)
    batch = [PendingCommit(make_entry(), MESSAGE + bytes([65 + n])) for n in range(8)]
    sent = {pending.entry.queue_id: pending.message for pending in batch}
    spool.commit_many(batch)
    assert [p.error for p in batch] == [None] * 8
    assert len(calls) == 2 and fsync_count == []
    for pending in batch:
        assert (
            spool.read_message(spool.read(pending.entry.queue_id, QueueState.INCOMING)) == sent[pending.entry.queue_id]
        )


def test_failed_syncfs_fails_the_whole_batch_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool", "syncfs")
    spool.create()

    def failing_syncfs(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(files, "syncfs", failing_syncfs)
    batch = [PendingCommit(make_entry(), MESSAGE) for _ in range(3)]
    spool.commit_many(batch)
    assert all(isinstance(p.error, SpoolError) for p in batch)
    assert files_under(spool) == []


def test_unknown_sync_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fdatasync"):
        Spool(tmp_path / "spool", "fdatasync")


# ---- the loop-side batcher


def test_commits_arriving_during_a_batch_share_the_next_one(spool: Spool) -> None:
    sizes = slowed(spool, 0.2)
    entries = [make_entry() for _ in range(20)]

    async def scenario() -> None:
        batcher = SpoolBatcher(spool)
        first = asyncio.ensure_future(batcher.commit(entries[0], MESSAGE))
        await asyncio.sleep(0.05)  # the first batch (one message) is being written
        await asyncio.gather(first, *(batcher.commit(e, MESSAGE) for e in entries[1:]))
        assert not batcher.busy

    asyncio.run(scenario())
    assert sizes == [1, 19]
    assert spool.ids(QueueState.INCOMING) == sorted(e.queue_id for e in entries)


def test_batches_are_bounded_by_max_batch(spool: Spool) -> None:
    sizes = slowed(spool, 0)

    async def scenario() -> None:
        batcher = SpoolBatcher(spool, max_batch=4)
        await asyncio.gather(*(batcher.commit(make_entry(), MESSAGE) for _ in range(10)))

    asyncio.run(scenario())
    assert sizes == [4, 4, 2]


def test_a_failed_commit_fails_only_its_own_session(spool: Spool) -> None:
    taken = make_entry()
    spool.commit(taken, MESSAGE)

    async def scenario() -> list[BaseException | None]:
        batcher = SpoolBatcher(spool)
        results = await asyncio.gather(
            batcher.commit(make_entry(), MESSAGE),
            batcher.commit(make_entry(taken.queue_id), MESSAGE),
            batcher.commit(make_entry(), MESSAGE),
            return_exceptions=True,
        )
        return list(results)

    first, clash, last = asyncio.run(scenario())
    assert first is None and last is None
    assert isinstance(clash, SpoolError)
    assert len(spool.ids(QueueState.INCOMING)) == 3


def test_a_commit_goes_on_when_its_session_is_cancelled(spool: Spool) -> None:
    started = threading.Event()
    slowed(spool, 0.2, started)
    entry = make_entry()

    async def scenario() -> None:
        batcher = SpoolBatcher(spool)
        task = asyncio.create_task(batcher.commit(entry, MESSAGE))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await batcher.drain()

    asyncio.run(scenario())
    assert spool.ids(QueueState.INCOMING) == [entry.queue_id]


def test_removals_are_batched_and_a_missing_record_is_not_an_error(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [make_entry() for _ in range(6)]
    for entry in entries:
        spool.commit(entry, MESSAGE, QueueState.ACTIVE)
    spool.remove(entries[0].queue_id, QueueState.ACTIVE)  # gone before the batch runs
    sizes: list[int] = []
    real = spool.remove_many

    def counting(queue_ids: list[str], state: QueueState, finished: list[str] | None = None) -> list[str]:
        sizes.append(len(queue_ids) + len(finished or ()))
        return real(queue_ids, state, finished)

    spool.remove_many = counting  # type: ignore[method-assign]

    async def scenario() -> None:
        batcher = SpoolBatcher(spool)
        await asyncio.gather(*(batcher.remove(e.queue_id) for e in entries))

    asyncio.run(scenario())
    assert sizes == [6]
    assert files_under(spool) == []
    assert f"{entries[0].queue_id}: record already gone from active" in caplog.text
