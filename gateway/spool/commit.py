"""One message of a group commit: its record, its bytes and state (:class:`PendingCommit`), and its files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gateway.errors import SpoolError, SpoolFullError
from gateway.message import MessageText
from gateway.spool import files as spool_files
from gateway.spool.entry import QueueState, SpoolEntry


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
