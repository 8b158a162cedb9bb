"""gateway.spool with worker slots: each worker claims into its own ``active.<slot>/``.

A multi-worker gateway (``workers`` > 1) must know what a dead worker held, so that
restarting that worker requeues exactly its messages and not those another worker is
delivering at that moment; the queue commands (``slot=None``) still see all of them.
"""

from __future__ import annotations

from pathlib import Path

from gateway.spool import QueueState, Spool
from tests.harness.spool_helpers import MESSAGE, make_entry


def _spools(root: Path) -> tuple[Spool, Spool, Spool]:
    admin, first, second = Spool(root), Spool(root, slot=0), Spool(root, slot=1)
    for spool in (admin, first, second):
        spool.create()
    return admin, first, second


def test_each_slot_claims_into_its_own_directory_and_only_one_claim_wins(tmp_path: Path) -> None:
    admin, first, second = _spools(tmp_path / "spool")
    entry = make_entry()
    admin.commit(entry, MESSAGE)
    assert first.claim(entry.queue_id, QueueState.INCOMING) is not None
    assert second.claim(entry.queue_id, QueueState.INCOMING) is None  # taken: never delivered twice
    assert (tmp_path / "spool" / "active.0" / f"{entry.queue_id}.json").exists()
    assert first.ids(QueueState.ACTIVE) == [entry.queue_id]
    assert second.ids(QueueState.ACTIVE) == []


def test_the_queue_commands_see_every_workers_active_messages(tmp_path: Path) -> None:
    admin, first, second = _spools(tmp_path / "spool")
    entries = [make_entry(), make_entry()]
    for entry in entries:
        admin.commit(entry, MESSAGE)
    first.claim(entries[0].queue_id, QueueState.INCOMING)
    second.claim(entries[1].queue_id, QueueState.INCOMING)
    assert admin.ids(QueueState.ACTIVE) == sorted(e.queue_id for e in entries)
    for entry in entries:
        assert admin.locate(entry.queue_id) is QueueState.ACTIVE
        assert admin.find(entry.queue_id).queue_id == entry.queue_id
    assert [d.name for d in admin.active_dirs()] == ["active", "active.0", "active.1"]


def test_requeue_active_moves_only_the_slots_own_records(tmp_path: Path) -> None:
    admin, first, second = _spools(tmp_path / "spool")
    entries = [make_entry(), make_entry()]
    for entry in entries:
        admin.commit(entry, MESSAGE)
    first.claim(entries[0].queue_id, QueueState.INCOMING)
    second.claim(entries[1].queue_id, QueueState.INCOMING)
    assert first.requeue_active() == 1  # worker 0 died and starts again
    assert admin.locate(entries[0].queue_id) is QueueState.INCOMING
    assert second.ids(QueueState.ACTIVE) == [entries[1].queue_id]  # worker 1's delivery is left alone
    assert first.requeue_active() == 0


def test_full_recovery_requeues_every_slot(tmp_path: Path) -> None:
    admin, first, second = _spools(tmp_path / "spool")
    entries = [make_entry(), make_entry(), make_entry()]
    for entry in entries:
        admin.commit(entry, MESSAGE)
    first.claim(entries[0].queue_id, QueueState.INCOMING)
    second.claim(entries[1].queue_id, QueueState.INCOMING)
    admin.claim(entries[2].queue_id, QueueState.INCOMING)  # a single-process gateway's active/
    report = admin.recover()
    assert report.requeued_active == 3
    assert admin.ids(QueueState.INCOMING) == sorted(e.queue_id for e in entries)
    assert admin.ids(QueueState.ACTIVE) == []
