"""Connection counts shared by every worker: ``smtpd_connection_limit`` and the per-client limit hold gateway-wide.

Postfix's anvil(8) counts connections per client for all smtpd processes; here
the workers share one small file, mapped into each (``state_dir/anvil``, made
by the supervisor at start). It is a hash table of client keys: each entry
holds a 64-bit hash of the key and one count per worker slot, entry 0 holds
the totals. A count changes under an exclusive ``flock`` of the file, a few
microseconds per connection, so the check at accept stays synchronous.

Per-slot counts make a dead worker's connections easy to forget: its slot's
column is zeroed when the slot starts again (:meth:`SharedConnectionLimiter.forget_slot`).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path

from gateway.config import Config
from gateway.smtpd.connection_limits import ConnectionLimiter

ENTRIES = 4096  # table size: at most this many distinct clients connected at once
_EMPTY, _DELETED = 0, 1  # hash values with a meaning of their own


def anvil_path(config: Config) -> Path:
    """Where the supervisor keeps the table: ``state_dir/anvil``."""
    return config.state_dir / "anvil"


def _entry_bytes(workers: int) -> int:
    return 8 + 4 * workers


def create_table(path: Path, workers: int, entries: int = ENTRIES) -> None:
    """Write an empty table for ``workers`` slots at ``path`` (mode 0600), replacing any old one.

    Raises:
        OSError: when the file cannot be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.truncate(entries * _entry_bytes(workers))
    os.replace(tmp, path)


class SharedConnectionLimiter(ConnectionLimiter):
    """A :class:`ConnectionLimiter` whose counts are those of every worker (see the module docstring).

    Args:
        path: the table made by :func:`create_table` for ``workers`` slots.
        slot: this worker's slot (its column).
        workers: how many slots the table has.
        total_limit: connections of the whole gateway (``smtpd_connection_limit``).
        per_client_limit: connections of one client over all workers.

    Raises:
        OSError: when the table cannot be opened or mapped.
    """

    def __init__(self, path: Path, slot: int, workers: int, total_limit: int, per_client_limit: int) -> None:
        super().__init__(total_limit, per_client_limit)
        self.slot, self.workers = slot, workers
        self._counts = struct.Struct(f"<{workers}i")
        self._entry = _entry_bytes(workers)
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        self._entries = size // self._entry
        self._map = mmap.mmap(self._fd, size)

    # ---- the table ----

    def _sum(self, index: int) -> int:
        return sum(self._counts.unpack_from(self._map, index * self._entry + 8))

    def _add(self, index: int, delta: int) -> None:
        offset = index * self._entry + 8 + 4 * self.slot
        (own,) = struct.unpack_from("<i", self._map, offset)
        struct.pack_into("<i", self._map, offset, own + delta)

    def _hash_at(self, index: int) -> int:
        value: int = struct.unpack_from("<Q", self._map, index * self._entry)[0]
        return value

    def _find(self, client: str, insert: bool) -> int | None:
        """The entry index of ``client`` (made when ``insert``); None when absent or the table is full."""
        key = int.from_bytes(
            hashlib.blake2b(client.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little"
        )
        key = max(key, _DELETED + 1)
        start = key % (self._entries - 1) + 1  # entry 0 holds the totals
        free: int | None = None
        for step in range(self._entries - 1):
            index = (start + step - 1) % (self._entries - 1) + 1
            found = self._hash_at(index)
            if found == key:
                return index
            if found == _DELETED and free is None:
                free = index
            elif found == _EMPTY:
                free = index if free is None else free
                break
        if not insert or free is None:
            return None
        struct.pack_into("<Q", self._map, free * self._entry, key)
        self._counts.pack_into(self._map, free * self._entry + 8, *([0] * self.workers))
        return free

    # ---- ConnectionLimiter ----

    def try_acquire(self, client: str, exempt: bool = False) -> bool:
        """Count a new connection of ``client`` for this worker; False (nothing counted) at a limit.

        An ``exempt`` client (``smtpd_client_event_limit_exceptions``) is held to the total only.
        """
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if self._sum(0) >= self.total_limit:
                return False
            index = self._find(client, insert=True)
            if index is None or (not exempt and self._sum(index) >= self.per_client_limit):
                return False  # a full table (ENTRIES clients connected) refuses too
            self._add(index, 1)
            self._add(0, 1)
            self.total += 1
            return True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self, client: str) -> None:
        """Forget one connection of ``client`` counted by this worker."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            index = self._find(client, insert=False)
            if index is not None:
                self._add(index, -1)
                if self._sum(index) <= 0:
                    struct.pack_into("<Q", self._map, index * self._entry, _DELETED)
            self._add(0, -1)
            self.total -= 1
            if self._sum(0) <= 0:  # nobody connected: start the table afresh, without its deleted marks
                self._map[self._entry :] = bytes(len(self._map) - self._entry)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def forget_slot(self) -> None:
        """Zero this slot's counts: what an earlier process of the slot held died with it."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for index in range(self._entries):
                offset = index * self._entry + 8 + 4 * self.slot
                struct.pack_into("<i", self._map, offset, 0)
                if index and self._hash_at(index) > _DELETED and self._sum(index) <= 0:
                    struct.pack_into("<Q", self._map, index * self._entry, _DELETED)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap and close the table."""
        self._map.close()
        os.close(self._fd)
