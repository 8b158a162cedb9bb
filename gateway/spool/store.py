"""The spool on disk and its commit protocol.

Layout under the spool directory::

    data/<id>.eml        the message, written once (mode 0600), never changed
    tmp/<id>.json        records being written
    incoming/ active/ deferred/ hold/ corrupt/   <id>.json envelope records
    active.<slot>/       a worker process's own active/ (``workers`` > 1, :mod:`gateway.workers`)
    done/                <id>.done: recipients delivered since the record was last written; <id>.json: the
                         record of a message delivered to all, until its files are deleted (:mod:`gateway.spool.marks`)
    lock                 flock()ed by the running gateway (its supervisor when it has workers)

Commit (what makes ``250 2.0.0 Ok: queued as <id>`` true):

1. write ``data/<id>.eml`` with O_EXCL, fsync it;
2. write ``tmp/<id>.json``, fsync it; fsync ``data/`` so the message's name is durable;
3. rename ``tmp/<id>.json`` to ``incoming/<id>.json`` (atomic publish), fsync ``incoming/``.

The record is the commit point: a crash before step 3 leaves a message file
without a record, which :meth:`Spool.recover` deletes (it was never
acknowledged); after step 3 the message is complete on disk. Its SHA-256 in the
record detects a damaged message file later (moved to ``corrupt/``).

Every later change is one atomic step: a state change is a rename of the
record between directories, a status change rewrites the record through
``tmp/`` + rename. A record is only rewritten by the relay worker while it is
in ``active/`` (claimed by rename, so two claimers cannot both win), which
makes the queue commands safe against a running gateway: they too only rename
or delete records outside ``active/``. Deferred records carry their next
attempt time as the file's mtime (as Postfix warps deferred queue files), so
finding due messages is a directory scan without reading records.

Concurrent commits are batched (group commit, :meth:`Spool.commit_many`): the
files of every message in the batch are written, then fsynced, then one fsync
of ``data/``, the renames, and one fsync per target directory. With
``spool_sync_method = "syncfs"`` the per-file and directory fsyncs of a batch
are replaced by two ``syncfs(2)`` calls on the spool's file system (one after
the writes, one after the renames): the same guarantees with two journal
commits per batch instead of one or more per file, at the price of also
flushing whatever else is dirty on that file system (best on a file system of
its own). No file changes; each message's 250 still waits for its own record
to be durable. Removals after
delivery are batched the same way (:meth:`Spool.remove_many`). What a next hop
accepted reaches the kernel at its 250, before that batch (:mod:`gateway.spool.marks`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.config import SPOOL_SYNC_METHODS
from gateway.errors import NotInQueue, SpoolError
from gateway.message import FileText, MessageText
from gateway.spool import files as spool_files
from gateway.spool import marks
from gateway.spool.commit import PendingCommit, commit_batch
from gateway.spool.entry import QueueState, SpoolEntry
from gateway.spool.queue_id import is_queue_id
from gateway.spool.recovery import RecoveryReport, recover, requeue

IN_MEMORY_BYTES = 1 << 20  # larger messages are read from the spool as a FileText, in chunks

log = logging.getLogger("gateway.spool")


class Spool:
    """A spool directory. Methods are synchronous and block on disk I/O.

    Call them from a worker thread (``asyncio.to_thread``) in the event loop.


    Args:
        root: the spool directory.
        sync_method: ``"fsync"`` or ``"syncfs"`` (``spool_sync_method``).
        slot: the worker process this spool object serves, or None for a single-process
            gateway and the queue commands. A worker claims into its own ``active.<slot>/``,
            so what a dead worker held is known and requeued when its slot starts again;
            with ``slot=None`` the ACTIVE state reads every worker's directory
            (:meth:`ids`, :meth:`read`, :meth:`locate`) and claims into ``active/``.
        in_memory_bytes: :meth:`read_message` gives a larger message as a file
            (``smtpd_data_spill_size``, the same bound as at DATA).
    """

    def __init__(
        self, root: Path, sync_method: str = "fsync", slot: int | None = None, in_memory_bytes: int = IN_MEMORY_BYTES
    ) -> None:
        if sync_method not in SPOOL_SYNC_METHODS:
            raise ValueError(f"unknown spool sync method {sync_method!r}")
        self.root = Path(root)
        self.slot = slot
        self.in_memory_bytes = in_memory_bytes
        active = QueueState.ACTIVE.value
        self._active_dir = self.root / (active if slot is None else f"{active}.{slot}")
        self.use_syncfs = sync_method == "syncfs"
        self.data_dir = self.root / "data"
        self.tmp_dir = self.root / "tmp"
        # The hot paths (commit_many, remove_many) build names as plain strings.
        self._data_prefix = f"{self.data_dir}{os.sep}"
        self._tmp_prefix = f"{self.tmp_dir}{os.sep}"
        self._state_prefix = {state: f"{self.state_dir(state)}{os.sep}" for state in QueueState}
        self._lock_fd: int | None = None

    def state_dir(self, state: QueueState) -> Path:
        """The directory holding records in ``state`` (for ACTIVE: this slot's own)."""
        return self._active_dir if state is QueueState.ACTIVE else self.root / state.value

    def active_dirs(self) -> list[Path]:
        """Every active directory on disk: ``active/`` and each worker's ``active.<slot>/``."""
        prefix = f"{QueueState.ACTIVE.value}."
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            names = []
        slots = sorted(name for name in names if name.startswith(prefix) and name[len(prefix) :].isdigit())
        return [self.root / QueueState.ACTIVE.value, *(self.root / name for name in slots)]

    def _reads_every_active_dir(self, state: QueueState) -> bool:
        return state is QueueState.ACTIVE and self.slot is None

    def record_path(self, queue_id: str, state: QueueState) -> Path:
        """Path of the record of ``queue_id`` in ``state``."""
        return self.state_dir(state) / f"{queue_id}.json"

    def message_path(self, queue_id: str) -> Path:
        """Path of the message file of ``queue_id``."""
        return self.data_dir / f"{queue_id}.eml"

    def create(self) -> None:
        """Create the directories (mode 0700) if missing.

        Raises:
            SpoolError: when they cannot be created.
        """
        try:
            for path in [
                self.root,
                self.data_dir,
                self.tmp_dir,
                self.root / marks.MARKS_DIR,
                *(self.state_dir(s) for s in QueueState),
            ]:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise SpoolError(f"cannot create spool directory {error.filename}: {error.strerror}") from None

    def lock(self) -> None:
        """Take the spool lock for this process (one running gateway per spool).

        Raises:
            SpoolError: when another process holds it.
        """
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"spool {self.root} is in use by another gateway process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the spool lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- commit ----

    def commit(self, entry: SpoolEntry, message: MessageText, state: QueueState = QueueState.INCOMING) -> None:
        """Store a new message durably; when this returns, 250 may be said.

        Sets ``entry.message_size``, ``entry.message_sha256`` and ``entry.state``.

        Raises:
            SpoolFullError: on ENOSPC/EDQUOT (nothing is left behind).
            SpoolError: on any other I/O error (nothing is left behind).
        """
        pending = PendingCommit(entry, message, state)
        self.commit_many([pending])
        if pending.error is not None:
            raise pending.error

    def commit_many(self, batch: list[PendingCommit]) -> None:
        """Commit several new messages with shared fsyncs (:func:`gateway.spool.commit.commit_batch`).

        On return ``item.error`` is None for each message that is durable; never raises for an I/O error.
        """
        commit_batch(self, batch)

    # ---- reading ----

    def read(self, queue_id: str, state: QueueState) -> SpoolEntry:
        """Load the record of ``queue_id`` in ``state``, with its done marks folded in (:func:`marks.fold`).

        Raises:
            NotInQueue: when there is no such record.
            ValueError: when the record is malformed, or not a regular file (a link, a FIFO).
        """
        try:
            raw = spool_files.read_regular_file(self.record_path(queue_id, state), spool_files.MAX_RECORD_BYTES)
        except FileNotFoundError:
            # the worker's hot path ends above; only the queue commands look into other workers' dirs
            others = self.active_dirs()[1:] if self._reads_every_active_dir(state) else []
            for directory in others:
                try:
                    raw = spool_files.read_regular_file(directory / f"{queue_id}.json", spool_files.MAX_RECORD_BYTES)
                    break
                except FileNotFoundError:
                    continue
            else:
                raise NotInQueue(f"{queue_id}: not in {state.value}") from None
        return marks.fold(self, SpoolEntry.from_json(raw, state))

    def locate(self, queue_id: str) -> QueueState:
        """The state whose directory holds a record for ``queue_id`` (the record is not parsed).

        Raises:
            NotInQueue: when no state holds it (or the ID is malformed).
        """
        if not is_queue_id(queue_id):
            raise NotInQueue(f"{queue_id!r} is not a queue ID")
        for state in QueueState:
            if self.record_path(queue_id, state).exists():
                return state
        if self.slot is None and any((d / f"{queue_id}.json").exists() for d in self.active_dirs()[1:]):
            return QueueState.ACTIVE
        raise NotInQueue(f"{queue_id}: no such message in the queue")

    def find(self, queue_id: str) -> SpoolEntry:
        """Load ``queue_id`` from whichever state holds it.

        Raises:
            NotInQueue: when no state holds it (or the ID is malformed).
            SpoolError: when its record cannot be parsed.
        """
        state = self.locate(queue_id)
        try:
            return self.read(queue_id, state)
        except ValueError as error:
            raise SpoolError(f"{queue_id}: unreadable record in {state.value}: {error}") from None

    def read_message(self, entry: SpoolEntry) -> bytes | FileText:
        """Read and verify the message file.

        A message of up to ``in_memory_bytes`` comes as ``bytes``; a larger
        one as a :class:`~gateway.message.FileText` over the spool file,
        checksummed in bounded reads, so it is never all in memory.

        Raises:
            SpoolError: when it is missing or its SHA-256 does not match (corrupt).
        """
        path = self.message_path(entry.queue_id)
        try:
            if entry.message_size > self.in_memory_bytes:
                data: bytes | FileText = spool_files.map_regular_file(path)
            else:
                data = spool_files.read_regular_file(path)
        except FileNotFoundError:
            raise SpoolError(f"{entry.queue_id}: message file missing") from None
        except ValueError as error:
            raise SpoolError(f"{entry.queue_id}: {error}") from None
        digest = hashlib.sha256()
        for chunk in data.chunks() if isinstance(data, FileText) else (data,):
            digest.update(chunk)
        if digest.hexdigest() != entry.message_sha256:
            raise SpoolError(f"{entry.queue_id}: message file damaged (checksum mismatch)")
        return data

    def ids(self, state: QueueState) -> list[str]:
        """Queue IDs with a record in ``state``, oldest first."""
        directories = self.active_dirs() if self._reads_every_active_dir(state) else [self.state_dir(state)]
        names: list[str] = []
        for directory in directories:
            try:
                names += os.listdir(directory)
            except FileNotFoundError:
                continue
        return sorted(name[:-5] for name in names if name.endswith(".json") and is_queue_id(name[:-5]))

    def entries(self, states: tuple[QueueState, ...] = tuple(QueueState)) -> Iterator[SpoolEntry]:
        """Every readable record in ``states`` (unreadable ones are skipped and logged)."""
        for state in states:
            for queue_id in self.ids(state):
                try:
                    yield self.read(queue_id, state)
                except NotInQueue:
                    continue  # moved or delivered while we listed
                except ValueError as error:
                    log.warning("%s: unreadable record in %s: %s", queue_id, state.value, error)

    def due_deferred(self, now: float) -> list[str]:
        """IDs in ``deferred/`` whose next attempt (the record's mtime) has come."""
        due = []
        directory = self.state_dir(QueueState.DEFERRED)
        for queue_id in self.ids(QueueState.DEFERRED):
            try:
                if os.stat(directory / f"{queue_id}.json").st_mtime <= now:
                    due.append(queue_id)
            except FileNotFoundError:
                continue
        return due

    # ---- state changes ----

    def move(self, queue_id: str, source: QueueState, target: QueueState) -> None:
        """Rename the record from ``source`` to ``target`` and fsync both directories.

        Raises:
            NotInQueue: when it is not (any longer) in ``source``.
        """
        try:
            os.rename(self.record_path(queue_id, source), self.record_path(queue_id, target))
        except FileNotFoundError:
            raise NotInQueue(f"{queue_id}: not in {source.value}") from None
        spool_files.fsync_dir(self.state_dir(target))
        spool_files.fsync_dir(self.state_dir(source))

    def claim(self, queue_id: str, source: QueueState) -> SpoolEntry | None:
        """Move a record into ``active/`` and load it; None when someone else took it first.

        A record that cannot be parsed is moved to ``corrupt/`` and None is returned.
        """
        try:
            os.rename(self.record_path(queue_id, source), self.record_path(queue_id, QueueState.ACTIVE))
        except FileNotFoundError:
            return None
        try:
            return self.read(queue_id, QueueState.ACTIVE)
        except (ValueError, NotInQueue) as error:
            log.error("%s: unreadable record, moved to corrupt: %s", queue_id, error)
            self.move(queue_id, QueueState.ACTIVE, QueueState.CORRUPT)
            return None

    def write(self, entry: SpoolEntry) -> None:
        """Rewrite ``entry``'s record in its current state atomically (tmp + fsync + rename), then delete
        its done marks. For a deferred entry the file's mtime is set to ``entry.next_attempt``.

        Raises:
            SpoolError: on an I/O error (the old record stays intact).
        """
        tmp_path = self.tmp_dir / f"{entry.queue_id}.json"
        target = self.record_path(entry.queue_id, entry.state)
        try:
            spool_files.rewrite_file(tmp_path, entry.to_json())
            if entry.state is QueueState.DEFERRED:
                os.utime(tmp_path, (entry.next_attempt, entry.next_attempt))
            os.rename(tmp_path, target)
            spool_files.fsync_dir(target.parent)
        except OSError as error:
            raise SpoolError(f"{entry.queue_id}: cannot rewrite record: {error.strerror}") from None
        with contextlib.suppress(OSError):
            marks.discard(self, entry.queue_id)  # marks left behind only repeat what the record says

    def update_and_move(self, entry: SpoolEntry, target: QueueState) -> None:
        """Persist ``entry``'s new statuses in place, then move it to ``target``.

        Two atomic steps: a crash between them leaves the updated record in its
        old state, so no status is ever lost.
        """
        self.write(entry)
        if target is not entry.state:
            if target is QueueState.DEFERRED:
                os.utime(self.record_path(entry.queue_id, entry.state), (entry.next_attempt, entry.next_attempt))
            self.move(entry.queue_id, entry.state, target)
            entry.state = target

    def defer_unchanged(self, queue_id: str, next_attempt: float) -> None:
        """Move a record from ``active/`` to ``deferred/`` without rewriting it (works on a full disk).

        Raises:
            NotInQueue: when it is not in ``active/``.
        """
        path = self.record_path(queue_id, QueueState.ACTIVE)
        try:
            os.utime(path, (next_attempt, next_attempt))
        except FileNotFoundError:
            raise NotInQueue(f"{queue_id}: not in active") from None
        self.move(queue_id, QueueState.ACTIVE, QueueState.DEFERRED)

    def remove(self, queue_id: str, state: QueueState) -> None:
        """Delete the record in ``state``, then the message file (record first: no orphan record).

        Raises:
            NotInQueue: when the record is not in ``state``.
        """
        if self.remove_many([queue_id], state):
            raise NotInQueue(f"{queue_id}: not in {state.value}")

    def mark_delivered(self, queue_id: str, indices: list[int]) -> None:
        """Note that the recipients at ``indices`` of the record were delivered: in the kernel on return,
        not fsynced (:func:`gateway.spool.marks.append`; raises OSError as it does)."""
        marks.append(self, queue_id, indices)

    def finish_record(self, queue_id: str) -> None:
        """Move the record of a message delivered to all from ``active/`` into ``done/`` now: one rename, no
        fsync (:mod:`gateway.spool.marks`); then delete it with :meth:`remove_many` ``finished=[queue_id]``.

        Raises NotInQueue when it is not in ``active/``, OSError on another error renaming it.
        """
        try:
            os.rename(f"{self._state_prefix[QueueState.ACTIVE]}{queue_id}.json", marks.finished_path(self, queue_id))
        except FileNotFoundError:
            raise NotInQueue(f"{queue_id}: not in {QueueState.ACTIVE.value}") from None

    def remove_many(self, queue_ids: list[str], state: QueueState, finished: list[str] | None = None) -> list[str]:
        """Delete several records in ``state`` with one directory fsync, then their message files and marks.

        ``finished``: messages whose records :meth:`finish_record` moved out of ``state`` already; the
        fsync makes that durable, then their files go as well. Returns the IDs of ``queue_ids`` that
        had no record in ``state`` (nothing was removed for them).

        Raises:
            OSError: when the directory cannot be fsynced (the records are gone
                from the directory but that may not be durable; after a crash
                such a message is delivered again, never lost).
        """
        missing, removed = [], list(finished or ())
        prefix = self._state_prefix[state]
        for queue_id in queue_ids:
            try:
                os.unlink(f"{prefix}{queue_id}.json")
                removed.append(queue_id)
            except FileNotFoundError:
                missing.append(queue_id)
        if removed:
            spool_files.fsync_dir(prefix)
        for queue_id in removed:
            try:
                os.unlink(f"{self._data_prefix}{queue_id}.eml")
            except FileNotFoundError:
                pass
            with contextlib.suppress(OSError):
                marks.discard(self, queue_id, finished=True)
        return missing

    # ---- start-up ----

    def recover(self) -> RecoveryReport:
        """Repair the spool after a crash (:func:`gateway.spool.recovery.recover`); at start, holding the lock."""
        return recover(self)

    def requeue_active(self, directory: Path | None = None) -> int:
        """Move every record of ``directory`` (default: this slot's active one) back to ``incoming/``
        (:func:`gateway.spool.recovery.requeue`: what a worker held when it died); returns how many.

        Raises:
            OSError: when a rename or the directory fsync fails.
        """
        return requeue(self, self.state_dir(QueueState.ACTIVE) if directory is None else directory)
