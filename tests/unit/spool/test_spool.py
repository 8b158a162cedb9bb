"""gateway.spool: the commit protocol, state changes, crash recovery and the record format."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import pytest

import gateway.spool.files as files
from gateway.errors import NotInQueue, SpoolError, SpoolFullError
from gateway.reply import Reply
from gateway.spool import QueueState, RecipientState, Spool, SpoolEntry, new_queue_id
from gateway.spool.entry import FORMAT_VERSION
from gateway.spool.queue_id import is_queue_id
from tests.harness.spool_helpers import MESSAGE, NOW, files_under, make_entry


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    result = Spool(tmp_path / "spool")
    result.create()
    return result


def state_of(spool: Spool, queue_id: str) -> list[QueueState]:
    return [state for state in QueueState if spool.record_path(queue_id, state).exists()]


# ---- create and commit


def test_create_makes_private_directories(spool: Spool) -> None:
    for path in [spool.root, spool.data_dir, spool.tmp_dir, *(spool.state_dir(s) for s in QueueState)]:
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_commit_writes_message_and_incoming_record(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE)
    assert entry.message_size == len(MESSAGE)
    assert entry.message_sha256 == hashlib.sha256(MESSAGE).hexdigest()
    assert entry.state is QueueState.INCOMING
    data = spool.message_path(entry.queue_id)
    record = spool.record_path(entry.queue_id, QueueState.INCOMING)
    assert data.read_bytes() == MESSAGE
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert files_under(spool) == [f"data/{entry.queue_id}.eml", f"incoming/{entry.queue_id}.json"]
    stored = json.loads(record.read_bytes())
    assert stored["message_sha256"] == hashlib.sha256(MESSAGE).hexdigest()
    assert stored["message_size"] == len(MESSAGE)
    assert stored["format_version"] == FORMAT_VERSION
    assert "state" not in stored
    loaded = spool.read(entry.queue_id, QueueState.INCOMING)
    assert loaded == entry and loaded.state is QueueState.INCOMING
    assert spool.read_message(loaded) == MESSAGE


def test_commit_into_hold(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE, QueueState.HOLD)
    assert state_of(spool, entry.queue_id) == [QueueState.HOLD]
    assert entry.state is QueueState.HOLD


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (errno.ENOSPC, SpoolFullError),
        (errno.EDQUOT, SpoolFullError),
        (errno.EIO, SpoolError),
    ],
)
def test_commit_failure_at_publish_leaves_nothing(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, code: int, error_type: type[SpoolError]
) -> None:
    def failing_rename(source: object, target: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(error_type) as info:
        spool.commit(make_entry(), MESSAGE)
    monkeypatch.undo()
    assert (code in files.FULL_ERRNOS) == isinstance(info.value, SpoolFullError)
    assert files_under(spool) == []


def test_commit_failure_writing_message_leaves_nothing(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls = []

    def write_then_fail(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:10])  # a short write first: the loop must continue
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write_then_fail)
    with pytest.raises(SpoolFullError):
        spool.commit(make_entry(), MESSAGE)
    monkeypatch.undo()
    assert len(calls) == 2
    assert files_under(spool) == []


def test_commit_failure_writing_record_leaves_nothing(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def open_failing_in_tmp(path: object, flags: int, mode: int = 0o777) -> int:
        if str(path).startswith(str(spool.tmp_dir)):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_failing_in_tmp)
    with pytest.raises(SpoolFullError):
        spool.commit(make_entry(), MESSAGE)
    monkeypatch.undo()
    assert files_under(spool) == []


def test_commit_failure_after_publish_leaves_nothing(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync_dir = files.fsync_dir

    def fsync_dir(path: Path) -> None:
        if path == spool.state_dir(QueueState.INCOMING):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_dir(path)

    monkeypatch.setattr(files, "fsync_dir", fsync_dir)
    with pytest.raises(SpoolError):
        spool.commit(make_entry(), MESSAGE)
    monkeypatch.undo()
    assert files_under(spool) == []


def test_commit_with_existing_queue_id_does_not_destroy_the_queued_message(spool: Spool) -> None:
    first = make_entry()
    spool.commit(first, MESSAGE)
    with pytest.raises(SpoolError):
        spool.commit(make_entry(first.queue_id), b"another message\r\n")
    assert spool.read_message(spool.read(first.queue_id, QueueState.INCOMING)) == MESSAGE


# ---- reading


def test_read_message_detects_damage(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE)
    path = spool.message_path(entry.queue_id)
    damaged = bytearray(MESSAGE)
    damaged[5] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(SpoolError, match="damaged"):
        spool.read_message(entry)
    path.write_bytes(MESSAGE[:-2])  # torn
    with pytest.raises(SpoolError, match="damaged"):
        spool.read_message(entry)
    path.unlink()
    with pytest.raises(SpoolError, match="missing"):
        spool.read_message(entry)


def test_find_and_read(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE, QueueState.DEFERRED)
    assert spool.find(entry.queue_id).state is QueueState.DEFERRED
    with pytest.raises(NotInQueue):
        spool.read(entry.queue_id, QueueState.INCOMING)
    with pytest.raises(NotInQueue):
        spool.find(new_queue_id(NOW + 1))
    for bad in ("../../etc/passwd", "abc", entry.queue_id.lower(), entry.queue_id + "0", ""):
        with pytest.raises(NotInQueue):
            spool.find(bad)


def test_find_unreadable_record_is_a_spool_error(spool: Spool) -> None:
    queue_id = new_queue_id(NOW)
    spool.record_path(queue_id, QueueState.HOLD).write_bytes(b"{not json")
    with pytest.raises(SpoolError, match="unreadable") as info:
        spool.find(queue_id)
    assert not isinstance(info.value, NotInQueue)


def test_ids_are_sorted_oldest_first_and_ignore_other_names(spool: Spool) -> None:
    ids = [new_queue_id(NOW + offset) for offset in (30, 10, 20, 0)]
    for queue_id in ids:
        spool.commit(make_entry(queue_id), MESSAGE)
    incoming = spool.state_dir(QueueState.INCOMING)
    (incoming / "README.json").write_text("{}")
    (incoming / f"{ids[0].lower()}.json").write_text("{}")
    (incoming / f"{ids[1]}.json.tmp").write_text("{}")
    assert spool.ids(QueueState.INCOMING) == sorted(ids)
    assert spool.ids(QueueState.INCOMING)[0] == ids[3]
    assert spool.ids(QueueState.DEFERRED) == []


def test_ids_of_missing_directory(tmp_path: Path) -> None:
    assert Spool(tmp_path / "nowhere").ids(QueueState.INCOMING) == []


def test_entries_order_and_unreadable_records_skipped(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    late, early = new_queue_id(NOW + 60), new_queue_id(NOW)
    held = new_queue_id(NOW - 60)
    spool.commit(make_entry(late), MESSAGE)
    spool.commit(make_entry(early), MESSAGE)
    spool.commit(make_entry(held), MESSAGE, QueueState.HOLD)
    broken = new_queue_id(NOW + 30)
    spool.record_path(broken, QueueState.INCOMING).write_bytes(b"[]")
    with caplog.at_level(logging.WARNING, logger="gateway.spool"):
        listed = [(entry.queue_id, entry.state) for entry in spool.entries()]
    assert listed == [(early, QueueState.INCOMING), (late, QueueState.INCOMING), (held, QueueState.HOLD)]
    assert any(broken in record.getMessage() for record in caplog.records)
    assert [entry.queue_id for entry in spool.entries((QueueState.HOLD,))] == [held]


# ---- claim, write, move


def test_claim_moves_to_active_once(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE)
    claimed = spool.claim(entry.queue_id, QueueState.INCOMING)
    assert claimed is not None
    assert claimed.state is QueueState.ACTIVE
    assert claimed == entry
    assert state_of(spool, entry.queue_id) == [QueueState.ACTIVE]
    assert spool.claim(entry.queue_id, QueueState.INCOMING) is None
    assert spool.claim(new_queue_id(NOW), QueueState.DEFERRED) is None
    assert state_of(spool, entry.queue_id) == [QueueState.ACTIVE]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format_version": 1}',
        b"\xff\xfe garbage",
        json.dumps({"format_version": FORMAT_VERSION + 1}).encode(),
    ],
)
def test_claim_of_malformed_record_goes_to_corrupt(
    spool: Spool, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    queue_id = new_queue_id(NOW)
    spool.record_path(queue_id, QueueState.INCOMING).write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="gateway.spool"):
        assert spool.claim(queue_id, QueueState.INCOMING) is None
    assert state_of(spool, queue_id) == [QueueState.CORRUPT]
    assert spool.record_path(queue_id, QueueState.CORRUPT).read_bytes() == content
    assert any(queue_id in record.getMessage() for record in caplog.records)


def test_update_and_move_to_deferred_sets_mtime_and_due_deferred(spool: Spool) -> None:
    entry = make_entry(recipients=("b@example.net", "c@example.net"))
    spool.commit(entry, MESSAGE)
    claimed = spool.claim(entry.queue_id, QueueState.INCOMING)
    assert claimed is not None
    claimed.recipients[0].state = RecipientState.DELIVERED
    claimed.recipients[1].state = RecipientState.DEFERRED
    claimed.recipients[1].attempts = 1
    claimed.recipients[1].last_reply = Reply(451, "4.4.1", "Connection timed out")
    claimed.next_attempt = NOW + 600
    claimed.last_delay = 600.0
    spool.update_and_move(claimed, QueueState.DEFERRED)
    assert claimed.state is QueueState.DEFERRED
    assert state_of(spool, entry.queue_id) == [QueueState.DEFERRED]
    record = spool.record_path(entry.queue_id, QueueState.DEFERRED)
    assert record.stat().st_mtime == pytest.approx(NOW + 600, abs=1e-3)
    assert spool.due_deferred(NOW + 599) == []
    assert spool.due_deferred(NOW + 600) == [entry.queue_id]
    assert spool.due_deferred(NOW + 10_000) == [entry.queue_id]
    loaded = spool.read(entry.queue_id, QueueState.DEFERRED)
    assert [r.state for r in loaded.recipients] == [RecipientState.DELIVERED, RecipientState.DEFERRED]
    assert loaded.recipients[1].last_reply == Reply(451, "4.4.1", "Connection timed out")
    assert [r.address for r in loaded.pending()] == ["c@example.net"]
    assert loaded.next_attempt == NOW + 600 and loaded.last_delay == 600.0
    assert files_under(spool) == [f"data/{entry.queue_id}.eml", f"deferred/{entry.queue_id}.json"]


def test_write_deferred_entry_moves_its_mtime(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE, QueueState.DEFERRED)
    entry.next_attempt = NOW + 5
    spool.write(entry)
    assert spool.due_deferred(NOW + 4) == [] and spool.due_deferred(NOW + 5) == [entry.queue_id]
    entry.next_attempt = NOW + 50
    spool.write(entry)
    assert spool.due_deferred(NOW + 49) == [] and spool.due_deferred(NOW + 50) == [entry.queue_id]
    assert spool.read(entry.queue_id, QueueState.DEFERRED).next_attempt == NOW + 50
    assert list(spool.tmp_dir.iterdir()) == []


def test_due_deferred_orders_and_filters(spool: Spool) -> None:
    ids = []
    for offset in (300, 100, 200):
        entry = make_entry(new_queue_id(NOW + offset))
        entry.next_attempt = NOW + offset
        spool.commit(entry, MESSAGE, QueueState.DEFERRED)
        spool.write(entry)
        ids.append(entry.queue_id)
    assert spool.due_deferred(NOW + 250) == sorted([ids[1], ids[2]])
    assert spool.due_deferred(NOW) == []


def test_update_and_move_to_same_state_only_rewrites(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE, QueueState.HOLD)
    entry.hold_reason = "operator"
    spool.update_and_move(entry, QueueState.HOLD)
    assert spool.read(entry.queue_id, QueueState.HOLD).hold_reason == "operator"
    assert state_of(spool, entry.queue_id) == [QueueState.HOLD]


def test_move_and_remove(spool: Spool) -> None:
    entry = make_entry()
    spool.commit(entry, MESSAGE)
    spool.move(entry.queue_id, QueueState.INCOMING, QueueState.HOLD)
    assert state_of(spool, entry.queue_id) == [QueueState.HOLD]
    with pytest.raises(NotInQueue):
        spool.move(entry.queue_id, QueueState.INCOMING, QueueState.HOLD)
    with pytest.raises(NotInQueue):
        spool.remove(entry.queue_id, QueueState.INCOMING)
    spool.remove(entry.queue_id, QueueState.HOLD)
    assert files_under(spool) == []
    with pytest.raises(NotInQueue):
        spool.remove(entry.queue_id, QueueState.HOLD)


# ---- recovery


def test_recover(spool: Spool) -> None:
    was_active = make_entry(new_queue_id(NOW))
    spool.commit(was_active, MESSAGE)
    assert spool.claim(was_active.queue_id, QueueState.INCOMING) is not None
    waiting = make_entry(new_queue_id(NOW + 1))
    spool.commit(waiting, MESSAGE, QueueState.DEFERRED)
    no_data = make_entry(new_queue_id(NOW + 2))
    spool.commit(no_data, MESSAGE)
    spool.message_path(no_data.queue_id).unlink()
    already_corrupt = make_entry(new_queue_id(NOW + 3))
    spool.commit(already_corrupt, MESSAGE, QueueState.CORRUPT)
    orphan = new_queue_id(NOW + 4)
    spool.message_path(orphan).write_bytes(b"never acknowledged")
    (spool.data_dir / "stray.txt").write_bytes(b"x")
    (spool.tmp_dir / f"{orphan}.json").write_bytes(b"{half a rec")
    (spool.tmp_dir / "other").write_bytes(b"")

    report = spool.recover()

    assert report.requeued_active == 1
    assert report.removed_tmp == 2
    assert report.removed_orphan_data == 2
    assert report.corrupt == [no_data.queue_id]
    assert state_of(spool, was_active.queue_id) == [QueueState.INCOMING]
    assert state_of(spool, waiting.queue_id) == [QueueState.DEFERRED]
    assert state_of(spool, no_data.queue_id) == [QueueState.CORRUPT]
    assert state_of(spool, already_corrupt.queue_id) == [QueueState.CORRUPT]
    assert list(spool.tmp_dir.iterdir()) == []
    assert sorted(path.name for path in spool.data_dir.iterdir()) == sorted(
        f"{queue_id}.eml" for queue_id in (was_active.queue_id, waiting.queue_id, already_corrupt.queue_id)
    )
    # Recovered messages are intact and claimable again.
    claimed = spool.claim(was_active.queue_id, QueueState.INCOMING)
    assert claimed is not None and spool.read_message(claimed) == MESSAGE
    # A second recovery finds nothing to do.
    again = spool.recover()
    assert (again.requeued_active, again.removed_tmp, again.removed_orphan_data, again.corrupt) == (1, 0, 0, [])


# ---- lock


def test_lock_excludes_a_second_spool_object(spool: Spool) -> None:
    first = Spool(spool.root)
    second = Spool(spool.root)
    first.lock()
    try:
        assert (spool.root / "lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(SpoolError, match="in use"):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    try:
        with pytest.raises(SpoolError):
            first.lock()
    finally:
        second.unlock()
    first.unlock()  # idempotent when not held


# ---- the record format


def test_entry_json_round_trip_with_non_ascii_and_surrogateescape(spool: Spool) -> None:
    raw_local = b"j\xfcrgen".decode("utf-8", "surrogateescape")  # Latin-1 bytes as received
    entry = make_entry(
        sender="jürgen@bücher.example", recipients=("用户@例子.广告", f"{raw_local}@example.net", "plain@example.net")
    )
    entry.smtputf8 = True
    entry.body_8bitmime = True
    entry.is_bounce = True
    entry.hold_reason = "prüfen"
    entry.last_delay = 300.0
    entry.next_attempt = NOW + 300
    entry.recipients[2].state = RecipientState.BOUNCED
    entry.recipients[2].attempts = 3
    entry.recipients[2].last_reply = Reply(550, "5.1.1", "User unknown ü")
    entry.recipients[2].last_attempt = NOW + 5
    entry.recipients[2].relay = "mx.example.net[192.0.2.25]:25"
    entry.client.tls_version = "TLSv1.3"
    entry.client.cert_sha256 = "ab" * 32
    entry.client.trusted = True

    raw = entry.to_json()
    assert "jürgen".encode() in raw
    assert b"j\xfcrgen@example.net" in raw  # the original byte, not an escape
    parsed = SpoolEntry.from_json(raw, QueueState.DEFERRED)
    assert parsed == entry
    assert parsed.state is QueueState.DEFERRED
    assert parsed.recipients[1].address == f"{raw_local}@example.net"

    spool.commit(entry, MESSAGE)
    assert spool.read(entry.queue_id, QueueState.INCOMING) == entry


def test_newer_format_version_is_rejected() -> None:
    data = json.loads(make_entry().to_json())
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        SpoolEntry.from_json(json.dumps(data).encode(), QueueState.INCOMING)
    data["format_version"] = FORMAT_VERSION
    assert SpoolEntry.from_json(json.dumps(data).encode(), QueueState.INCOMING).format_version == FORMAT_VERSION


@pytest.mark.parametrize(
    "mutate", ["drop_sender", "drop_recipients", "bad_state", "bad_address", "recipients_not_list", "not_object"]
)
def test_malformed_records_raise_value_error(mutate: str) -> None:
    data = json.loads(make_entry().to_json())
    if mutate == "drop_sender":
        del data["sender"]
    elif mutate == "drop_recipients":
        del data["recipients"]
    elif mutate == "bad_state":
        data["recipients"][0]["state"] = "lost"
    elif mutate == "bad_address":
        data["client"]["address"] = "not-an-ip"
    elif mutate == "recipients_not_list":
        data["recipients"] = 5
    else:
        data = ["not", "an", "object"]
    with pytest.raises(ValueError):
        SpoolEntry.from_json(json.dumps(data).encode(), QueueState.INCOMING)


def test_queue_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_queue_id(NOW + step / 1000) for step in range(200)]
    assert ids == sorted(ids)
    same_time = {new_queue_id(NOW) for _ in range(50)}
    assert len({queue_id[:13] for queue_id in same_time}) == 1
    assert len(same_time) > 40  # the random part tells them apart (a few 24-bit collisions at most)
    assert all(is_queue_id(queue_id) and len(queue_id) == 19 for queue_id in ids)
    assert int(ids[0][:13], 16) == int(NOW * 1_000_000)
