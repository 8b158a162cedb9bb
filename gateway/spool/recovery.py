"""Crash recovery of the spool at start: what was in delivery goes back, what was never acknowledged goes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.spool import files as spool_files
from gateway.spool import marks
from gateway.spool.entry import QueueState

if TYPE_CHECKING:
    from gateway.spool.store import Spool


@dataclass(slots=True)
class RecoveryReport:
    """What :meth:`Spool.recover` found at start (counts of files)."""

    requeued_active: int = 0
    removed_tmp: int = 0
    removed_orphan_data: int = 0
    removed_done: int = 0
    corrupt: list[str] = field(default_factory=list)


def recover(spool: Spool) -> RecoveryReport:
    """Repair the spool after a crash; call at start, holding the lock.

    ``active/`` and every worker's ``active.<slot>/`` go back to ``incoming/``; ``tmp/`` is emptied; message files
    without a record anywhere are deleted (never acknowledged, or delivered to all: their record is in
    ``done/``), and so is everything in ``done/`` without a queued record (:mod:`gateway.spool.marks`);
    records without a message file are moved to ``corrupt/``.
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
    report.removed_done = marks.discard_orphans(spool, known)
    spool_files.fsync_dir(spool.data_dir)
    spool_files.fsync_dir(spool.tmp_dir)
    return report


def requeue(spool: Spool, source: Path) -> int:
    """Move every record of the active directory ``source`` back to ``incoming/``; returns how many.

    What a worker had claimed or was handed when it died goes back to the queue
    when its slot starts again (:meth:`Spool.requeue_active`).

    Raises:
        OSError: when a rename or the directory fsync fails.
    """
    try:
        names = [name for name in os.listdir(source) if name.endswith(".json")]
    except FileNotFoundError:
        return 0
    incoming = spool.state_dir(QueueState.INCOMING)
    for name in names:
        os.rename(source / name, incoming / name)
    if names:
        spool_files.fsync_dir(incoming)
        spool_files.fsync_dir(source)
    return len(names)
