"""The group commit of new messages (:func:`commit_batch`, the protocol of :mod:`gateway.spool.store`).

One message of it is a :class:`PendingCommit` (record, bytes, state) and, while
its files are written, a :class:`CommitFiles`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.errors import SpoolError, SpoolFullError
from gateway.message import MessageText, message_parts, message_size, piece_chunks
from gateway.spool import files as spool_files
from gateway.spool.entry import QueueState, SpoolEntry

if TYPE_CHECKING:
    from gateway.spool.store import Spool


@dataclass(slots=True)
class PendingCommit:
    """One message of a group commit: its record, its bytes, the state to publish it in.

    ``error`` is set by :meth:`Spool.commit_many` when this message could not be committed.
    """

    entry: SpoolEntry
    message: MessageText
    state: QueueState = QueueState.INCOMING
    error: SpoolError | None = None


@dataclass(slots=True)
class CommitFiles:
    """The files of one message while a group commit writes them; ``fail`` removes them again."""

    item: PendingCommit
    tmp_path: str
    data_fd: int = -1
    record_fd: int = -1
    created: list[str] = field(default_factory=list)  # plain strings: pathlib costs show in profiles

    def close(self) -> None:
        for fd in (self.data_fd, self.record_fd):
            if fd >= 0:
                os.close(fd)
        self.data_fd = self.record_fd = -1

    def fail(self, error: OSError) -> None:
        # Never acknowledged: withdraw the record first (no record without message), then the data.
        self.close()
        for path in reversed(self.created):
            try:
                os.unlink(path)
            except OSError:
                pass
        self.created.clear()
        if self.item.error is None:
            if error.errno in spool_files.FULL_ERRNOS:
                self.item.error = SpoolFullError(f"spool file system full: {error.strerror}")
            else:
                self.item.error = SpoolError(f"cannot write to spool: {error.strerror}")


def commit_batch(spool: Spool, batch: list[PendingCommit]) -> None:
    """Commit several new messages with shared directory fsyncs (group commit).

    Each item succeeds or fails on its own: on return ``item.error`` is None
    when that message is durable (250 may be said), else the
    :class:`SpoolFullError` or :class:`SpoolError` to answer with; a failed
    item leaves no file behind. Never raises for an I/O error.
    """
    live: list[CommitFiles] = []
    for item in batch:
        files = _write_unsynced(spool, item)
        if files is not None:
            live.append(files)
    if spool.use_syncfs and live:
        try:
            spool_files.syncfs(live[0].data_fd)
        except OSError as error:
            for files in live:
                files.fail(error)
    else:
        for files in live:  # fsync after all writes: the file system can merge them into few journal commits
            try:
                os.fsync(files.data_fd)
                os.fsync(files.record_fd)
            except OSError as error:
                files.fail(error)
    for files in live:
        files.close()
    live = [files for files in live if files.item.error is None]
    if not live:
        return
    if not spool.use_syncfs:
        try:
            spool_files.fsync_dir(spool.data_dir)
        except OSError as error:
            for files in live:
                files.fail(error)
            return
    published: dict[QueueState, list[CommitFiles]] = {}
    for files in live:
        record_path = f"{spool._state_prefix[files.item.state]}{files.item.entry.queue_id}.json"
        try:
            os.rename(files.tmp_path, record_path)
        except OSError as error:
            files.fail(error)
            continue
        files.created[-1] = record_path
        published.setdefault(files.item.state, []).append(files)
    if spool.use_syncfs and published:
        try:
            spool_files.syncfs_path(spool._data_prefix)
        except OSError as error:
            for members in published.values():
                for files in members:
                    files.fail(error)
        return
    for state, members in published.items():
        try:
            spool_files.fsync_dir(spool.state_dir(state))
        except OSError as error:
            for files in members:
                files.fail(error)


def _write_unsynced(spool: Spool, item: PendingCommit) -> CommitFiles | None:
    entry = item.entry
    digest = hashlib.sha256()
    for piece in message_parts(item.message):
        for chunk in piece_chunks(piece):  # a file-held body in bounded reads
            digest.update(chunk)
    entry.message_size = message_size(item.message)
    entry.message_sha256 = digest.hexdigest()
    entry.state = item.state
    files = CommitFiles(item, f"{spool._tmp_prefix}{entry.queue_id}.json")
    try:
        data_path = f"{spool._data_prefix}{entry.queue_id}.eml"
        files.data_fd = spool_files.create_and_write(data_path, item.message)
        item.message = b""  # written: the bytes need not live as long as the batch does
        files.created.append(data_path)
        files.record_fd = spool_files.create_and_write(files.tmp_path, entry.to_json())
        files.created.append(files.tmp_path)
    except OSError as error:
        files.fail(error)
        return None
    return files
