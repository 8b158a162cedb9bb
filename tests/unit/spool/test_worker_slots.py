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


def _one_claimed_by_each(admin: Spool, first: Spool, second: Spool) -> list[str]:
    """Two messages committed; worker 0 claims the first, worker 1 the second. Returns their IDs."""
    entries = [make_entry(), make_entry()]
    for entry in entries:
        admin.commit(entry, MESSAGE)
    assert first.claim(entries[0].queue_id, QueueState.INCOMING) is not None
    assert second.claim(entries[1].queue_id, QueueState.INCOMING) is not None
    return [entry.queue_id for entry in entries]


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
    ids = _one_claimed_by_each(admin, first, second)
    assert admin.ids(QueueState.ACTIVE) == sorted(ids)
    for queue_id in ids:
        assert admin.locate(queue_id) is QueueState.ACTIVE
        assert admin.find(queue_id).queue_id == queue_id
    assert [d.name for d in admin.active_dirs()] == ["active", "active.0", "active.1"]


def test_requeue_active_moves_only_the_slots_own_records(tmp_path: Path) -> None:
    admin, first, second = _spools(tmp_path / "spool")
    first_id, second_id = _one_claimed_by_each(admin, first, second)
    assert first.requeue_active() == 1  # worker 0 died and starts again
    assert admin.locate(first_id) is QueueState.INCOMING
    assert second.ids(QueueState.ACTIVE) == [second_id]  # worker 1's delivery is left alone
    assert first.requeue_active() == 0


def test_full_recovery_requeues_every_slot(tmp_path: Path) -> None:
    admin, first, second = _spools(tmp_path / "spool")
    ids = _one_claimed_by_each(admin, first, second)
    single = make_entry()
    admin.commit(single, MESSAGE)
    admin.claim(single.queue_id, QueueState.INCOMING)  # a single-process gateway's active/
    report = admin.recover()
    assert report.requeued_active == 3
    assert admin.ids(QueueState.INCOMING) == sorted([*ids, single.queue_id])
    assert admin.ids(QueueState.ACTIVE) == []
