"""gateway.ops.queue_admin on a real spool in tmp_path: list, show, hold, release, flush, delete."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from gateway.envelope import ClientInfo
from gateway.errors import NotInQueue, SpoolError
from gateway.ops import queue_admin
from gateway.ops.queue_admin import MessageBusy, QueueRow, delete, flush, format_list, hold, release, rows, show
from gateway.reply import Reply
from gateway.spool import QueueState, RecipientState, RecipientStatus, Spool, SpoolEntry, new_queue_id

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
MESSAGE = b"From: a@example.org\r\nSubject: queued\r\n\r\nbody line\r\n"


def make_entry(
    arrival: float, sender: str = "a@example.org", recipients: tuple[str, ...] = ("b@example.net",)
) -> SpoolEntry:
    return SpoolEntry(
        queue_id=new_queue_id(arrival),
        arrival=arrival,
        sender=sender,
        recipients=[RecipientStatus(address) for address in recipients],
        client=ClientInfo(ipaddress.ip_address("192.0.2.10"), 40000, "smtp"),
        message_size=0,
        message_sha256="",
    )


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    result = Spool(tmp_path / "spool")
    result.create()
    return result


def commit(
    spool: Spool,
    state: QueueState = QueueState.INCOMING,
    *,
    arrival: float = NOW,
    sender: str = "a@example.org",
    recipients: tuple[str, ...] = ("b@example.net",),
    message: bytes = MESSAGE,
) -> SpoolEntry:
    entry = make_entry(arrival, sender, recipients)
    spool.commit(entry, message, state)
    return entry


def where(spool: Spool, queue_id: str) -> list[QueueState]:
    return [state for state in QueueState if spool.record_path(queue_id, state).exists()]


# ---- list


def test_empty_queue(spool: Spool) -> None:
    assert rows(spool) == []
    assert format_list([]) == "Mail queue is empty"


def test_rows_and_format_list(spool: Spool) -> None:
    incoming = commit(
        spool, arrival=NOW, sender="alice@example.org", recipients=("bob@example.net", "carol@example.net")
    )
    deferred = make_entry(NOW + 10, "", ("postmaster@example.com", "done@example.com"))
    deferred.recipients[0].state = RecipientState.DEFERRED
    deferred.recipients[0].last_reply = Reply(451, "4.4.1", "Connection timed out")
    deferred.recipients[1].state = RecipientState.DELIVERED
    deferred.recipients[1].last_reply = Reply(250, "2.0.0", "Ok")
    deferred.next_attempt = NOW + 3600
    spool.commit(deferred, b"x" * 3000, QueueState.DEFERRED)
    held = commit(spool, QueueState.HOLD, arrival=NOW - 10, sender="held@example.org")

    listed = rows(spool)
    assert [row.queue_id for row in listed] == [incoming.queue_id, deferred.queue_id, held.queue_id]
    assert listed[0] == QueueRow(
        queue_id=incoming.queue_id,
        state="incoming",
        size=len(MESSAGE),
        arrival=NOW,
        sender="alice@example.org",
        recipients=("bob@example.net", "carol@example.net"),
        next_attempt=None,
        last_error=None,
    )
    assert listed[1].state == "deferred"
    assert listed[1].recipients == ("postmaster@example.com",)  # delivered recipients are not listed
    assert listed[1].next_attempt == NOW + 3600
    assert listed[1].last_error == "<postmaster@example.com>: 451 4.4.1 Connection timed out"
    assert listed[2].state == "hold" and listed[2].next_attempt is None

    text = format_list(listed)
    lines = text.splitlines()
    assert lines[0].startswith("Queue ID")
    for row in listed:
        header = next(line for line in lines if line.startswith(row.queue_id))
        assert row.state in header and str(row.size) in header
    assert "alice@example.org" in text and "held@example.org" in text
    assert "MAILER-DAEMON" in text  # the null sender
    assert "2023-11-14 22:13:20" in text  # arrival, UTC
    assert "2023-11-14 23:13:20" in text  # next attempt of the deferred message, UTC
    for recipient in ("bob@example.net", "carol@example.net", "postmaster@example.com"):
        assert any(line.strip() == recipient for line in lines)
    assert "done@example.com" not in text
    assert "(<postmaster@example.com>: 451 4.4.1 Connection timed out)" in text
    total = 2 * len(MESSAGE) + 3000
    assert lines[-1] == f"-- {total // 1024} Kbytes in 3 Requests."


def test_rows_include_active_and_corrupt(spool: Spool) -> None:
    active = commit(spool)
    assert spool.claim(active.queue_id, QueueState.INCOMING) is not None
    corrupt = commit(spool, QueueState.CORRUPT, arrival=NOW + 1)
    assert [(row.queue_id, row.state) for row in rows(spool)] == [
        (active.queue_id, "active"),
        (corrupt.queue_id, "corrupt"),
    ]


def test_show(spool: Spool) -> None:
    entry = commit(spool, QueueState.HOLD, sender="alice@example.org")
    text = show(spool, entry.queue_id)
    assert text.startswith("state: hold\n")
    assert "alice@example.org" in text and entry.queue_id in text
    assert "Subject: queued" in text
    assert "body line" not in text  # headers only
    with pytest.raises(NotInQueue):
        show(spool, new_queue_id(NOW + 99))


# ---- hold and release


def test_hold_and_release(spool: Spool) -> None:
    entry = commit(spool)
    hold(spool, entry.queue_id)
    assert where(spool, entry.queue_id) == [QueueState.HOLD]
    with pytest.raises(NotInQueue):
        hold(spool, entry.queue_id)  # already held
    release(spool, entry.queue_id)
    assert where(spool, entry.queue_id) == [QueueState.INCOMING]
    # moved by one rename, never rewritten (a rewrite could race a worker's claim)
    assert spool.read(entry.queue_id, QueueState.INCOMING) == entry
    with pytest.raises(NotInQueue):
        release(spool, entry.queue_id)  # not held any more
    assert spool.read_message(spool.read(entry.queue_id, QueueState.INCOMING)) == MESSAGE


def test_hold_deferred_keeps_record(spool: Spool) -> None:
    entry = commit(spool, QueueState.DEFERRED)
    hold(spool, entry.queue_id)
    assert where(spool, entry.queue_id) == [QueueState.HOLD]
    assert spool.read(entry.queue_id, QueueState.HOLD) == entry


def test_hold_of_corrupt_is_refused(spool: Spool) -> None:
    entry = commit(spool, QueueState.CORRUPT)
    with pytest.raises(NotInQueue, match="corrupt"):
        hold(spool, entry.queue_id)
    assert where(spool, entry.queue_id) == [QueueState.CORRUPT]


# ---- flush


def test_flush_all_moves_deferred_to_incoming(spool: Spool) -> None:
    deferred = [commit(spool, QueueState.DEFERRED, arrival=NOW + i) for i in range(3)]
    for entry in deferred:
        entry.next_attempt = NOW + 10_000_000_000  # far future
        spool.write(entry)
    held = commit(spool, QueueState.HOLD, arrival=NOW + 5)
    incoming = commit(spool, arrival=NOW + 6)
    done = flush(spool)
    assert done == [entry.queue_id for entry in deferred]
    for entry in deferred:
        assert where(spool, entry.queue_id) == [QueueState.INCOMING]
        assert spool.read(entry.queue_id, QueueState.INCOMING).recipients == entry.recipients
    assert where(spool, held.queue_id) == [QueueState.HOLD]
    assert where(spool, incoming.queue_id) == [QueueState.INCOMING]
    assert spool.ids(QueueState.DEFERRED) == []
    assert flush(spool) == []


def test_flush_one(spool: Spool) -> None:
    first = commit(spool, QueueState.DEFERRED)
    second = commit(spool, QueueState.DEFERRED, arrival=NOW + 1)
    assert flush(spool, first.queue_id) == [first.queue_id]
    assert where(spool, first.queue_id) == [QueueState.INCOMING]
    assert where(spool, second.queue_id) == [QueueState.DEFERRED]
    # An incoming message may be flushed too (postqueue -i): it stays incoming.
    assert flush(spool, first.queue_id) == [first.queue_id]
    assert where(spool, first.queue_id) == [QueueState.INCOMING]


def test_flush_one_held_is_refused(spool: Spool) -> None:
    held = commit(spool, QueueState.HOLD)
    with pytest.raises(NotInQueue, match="hold"):
        flush(spool, held.queue_id)
    assert where(spool, held.queue_id) == [QueueState.HOLD]


def test_flush_racing_a_worker_claim_does_not_duplicate(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = commit(spool, QueueState.DEFERRED)
    real_locate = spool.locate

    def locate_then_worker_claims(queue_id: str) -> QueueState:
        found = real_locate(queue_id)
        assert spool.claim(queue_id, QueueState.DEFERRED) is not None  # the relay worker wins the race
        return found

    monkeypatch.setattr(spool, "locate", locate_then_worker_claims)
    try:
        flush(spool, entry.queue_id)
    except SpoolError:
        pass  # refusing (NotInQueue / MessageBusy) is fine; duplicating is not
    assert where(spool, entry.queue_id) == [QueueState.ACTIVE]


# ---- delete


def test_delete_one(spool: Spool) -> None:
    keep = commit(spool)
    for state in (QueueState.INCOMING, QueueState.DEFERRED, QueueState.HOLD, QueueState.CORRUPT):
        entry = commit(spool, state, arrival=NOW + 1)
        assert delete(spool, entry.queue_id) == [entry.queue_id]
        assert where(spool, entry.queue_id) == []
        assert not spool.message_path(entry.queue_id).exists()
    assert where(spool, keep.queue_id) == [QueueState.INCOMING]
    assert spool.message_path(keep.queue_id).exists()


def test_delete_all_skips_active(spool: Spool) -> None:
    active = commit(spool, arrival=NOW)
    assert spool.claim(active.queue_id, QueueState.INCOMING) is not None
    others = [
        commit(spool, state, arrival=NOW + i)
        for i, state in enumerate(
            (QueueState.INCOMING, QueueState.DEFERRED, QueueState.HOLD, QueueState.CORRUPT, QueueState.INCOMING),
            start=1,
        )
    ]
    deleted = delete(spool, all_messages=True)
    assert sorted(deleted) == sorted(entry.queue_id for entry in others)
    assert len(deleted) == 5
    for entry in others:
        assert where(spool, entry.queue_id) == []
        assert not spool.message_path(entry.queue_id).exists()
    assert where(spool, active.queue_id) == [QueueState.ACTIVE]
    assert spool.message_path(active.queue_id).exists()
    assert [row.queue_id for row in rows(spool)] == [active.queue_id]
    assert delete(spool, all_messages=True) == []


def test_active_message_is_busy(spool: Spool) -> None:
    entry = commit(spool)
    assert spool.claim(entry.queue_id, QueueState.INCOMING) is not None
    for operation in (
        lambda: delete(spool, entry.queue_id),
        lambda: hold(spool, entry.queue_id),
        lambda: release(spool, entry.queue_id),
        lambda: flush(spool, entry.queue_id),
    ):
        with pytest.raises(MessageBusy):
            operation()
    assert where(spool, entry.queue_id) == [QueueState.ACTIVE]
    assert spool.message_path(entry.queue_id).exists()
    assert issubclass(MessageBusy, SpoolError) and not issubclass(MessageBusy, NotInQueue)


@pytest.mark.parametrize(
    "queue_id",
    [
        "0" * 19,  # well-formed, not queued
        "not-a-queue-id",
        "../incoming/x",
        "",
        "abcdef0123456789abc",  # lower case
    ],
)
def test_unknown_or_malformed_id_is_not_in_queue(spool: Spool, queue_id: str) -> None:
    entry = commit(spool, QueueState.DEFERRED)
    # flush() with no (empty) ID means "all deferred"; every other operation needs a real ID.
    operations = (delete, hold, release, flush, show) if queue_id else (delete, hold, release, show)
    for operation in operations:
        with pytest.raises(NotInQueue):
            operation(spool, queue_id)  # type: ignore[operator]
    assert where(spool, entry.queue_id) == [QueueState.DEFERRED]


def test_files_outside_the_spool_are_never_touched(spool: Spool, tmp_path: Path) -> None:
    outside = tmp_path / "victim.json"
    outside.write_text("{}")
    with pytest.raises(NotInQueue):
        delete(spool, os.path.relpath(outside.with_suffix(""), spool.state_dir(QueueState.INCOMING)))
    assert outside.exists()


def test_delete_one_unreadable_corrupt_record(spool: Spool) -> None:
    queue_id = new_queue_id(NOW)
    spool.record_path(queue_id, QueueState.CORRUPT).write_bytes(b"{truncated")
    spool.message_path(queue_id).write_bytes(MESSAGE)
    assert delete(spool, queue_id) == [queue_id]
    assert where(spool, queue_id) == []


def test_module_lists_every_state() -> None:
    assert set(queue_admin.LISTED_STATES) == set(QueueState)


def test_queue_list_shows_control_characters_and_undecodable_bytes_cat_v_style() -> None:
    from gateway.ops.queue_admin import QueueRow, format_list

    row = QueueRow(
        queue_id="661D365E7D83F0E168B",
        state="deferred",
        size=10,
        arrival=0.0,
        sender="\x1b]0;x\x07@example.com",
        recipients=("raw\udc9bbyte@example.org", "ok@example.org"),
        next_attempt=60.0,
        last_error="<raw\udc9bbyte@example.org>: 451 4.3.0 \x1b[2J\x9b1m\u2028",
    )
    text = format_list([row])
    text.encode("utf-8", "strict")  # an old record's undecodable byte cannot crash a strict stdout
    assert "^[]0;x^G@example.com" in text
    assert "raw\\x9bbyte@example.org" in text
    assert "451 4.3.0 ^[[2JM-^[1m\\u2028" in text
    assert not any(ch in text for ch in "\x1b\x07\x9b\u2028")


def test_printable_keeps_text_and_tabs() -> None:
    from gateway.safe_text import printable

    assert printable("Grüße, 日本語\tok") == "Grüße, 日本語\tok"
    assert printable("a\r\nb\x00\x7f") == "a^M^Jb^@^?"
