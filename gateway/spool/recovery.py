"""Crash recovery of the spool at start: what was in delivery goes back, what was never acknowledged goes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.spool import files as spool_files
from gateway.spool.entry import QueueState

if TYPE_CHECKING:
    from gateway.spool.store import Spool


@dataclass(slots=True)
class RecoveryReport:
    """What :meth:`Spool.recover` found at start (counts of files)."""

    requeued_active: int = 0
    removed_tmp: int = 0
    removed_orphan_data: int = 0
    corrupt: list[str] = field(default_factory=list)


def recover(spool: Spool) -> RecoveryReport:
    """Repair the spool after a crash; call at start, holding the lock.

    ``active/`` and every worker's ``active.<slot>/`` go back to ``incoming/``; ``tmp/`` is emptied; message files
    without a record anywhere are deleted (never acknowledged); records
    without a message file are moved to ``corrupt/``.
    """
    report = RecoveryReport()
    for directory in spool.active_dirs():
        report.requeued_active += spool.requeue_active(directory)
    for name in os.listdir(spool.tmp_dir):
        (spool.tmp_dir / name).unlink()
        report.removed_tmp += 1
    known: set[str] = set()
    for state in QueueState:
        for queue_id in spool.ids(state):
            known.add(queue_id)
            if state is not QueueState.CORRUPT and not spool.message_path(queue_id).exists():
                spool.move(queue_id, state, QueueState.CORRUPT)
                report.corrupt.append(queue_id)
    for name in os.listdir(spool.data_dir):
        if not name.endswith(".eml") or name[:-4] not in known:
            (spool.data_dir / name).unlink()
            report.removed_orphan_data += 1
    spool_files.fsync_dir(spool.data_dir)
    spool_files.fsync_dir(spool.tmp_dir)
    return report
