"""Recipient address verification (Postfix ``reject_unverified_recipient``, verify(8)), with an on-disk cache.

For an address of ``relay_domains`` that no table or directory knows, the
gateway asks the domain's next hop (the mailbox server) with a probe that stops
after ``RCPT TO`` (:mod:`gateway.relay.probe`): 2xx means the mailbox exists,
5xx that it does not, anything else (4xx, no answer within
``address_verify_timeout``) that it cannot be told now, which gives ``450 4.1.1``
and is not remembered. Results are kept in ``state_dir/address_verify.sqlite``
(so they survive a restart and are shared by the workers), as verify(8) does:

* a deliverable address for ``address_verify_positive_expire_time`` (31d),
  probed again in the background once older than
  ``address_verify_positive_refresh_time`` (7d);
* an undeliverable one for ``address_verify_negative_expire_time`` (3d),
  probed again in the background once older than
  ``address_verify_negative_refresh_time`` (3h).

The cache is SQLite (the standard library's), each access in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.config import Config
from gateway.recipients.validation import Answer, Lookup
from gateway.reply import Reply

log = logging.getLogger("gateway.recipients")

CACHE_FILE = "address_verify.sqlite"


class VerifyCache:
    """Probe results by address: ``(deliverable, reply text, unix seconds)``.

    Args:
        path: the SQLite file, made at the first result kept (nothing is written before:
            ``check-config`` and ``gateway explain`` build this too).
        read_only: keep no results (``gateway explain``).
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.Lock()  # one thread at a time on the one connection
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened (and the table made) the first time; called under the lock."""
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)  # used from to_thread's threads
            db.execute("PRAGMA journal_mode=WAL")  # readers in other workers do not wait for a writer
            db.execute(
                "CREATE TABLE IF NOT EXISTS verified (address TEXT PRIMARY KEY, deliverable INTEGER, "
                "reply TEXT, updated REAL)"
            )
            self._db = db
        return self._db

    def get(self, address: str) -> tuple[bool, str, float] | None:
        """The cached result of ``address`` (lower-cased), or None."""
        with self._lock:
            if self._db is None and not self.path.exists():
                return None
            row = (
                self._connection()
                .execute("SELECT deliverable, reply, updated FROM verified WHERE address = ?", (address.lower(),))
                .fetchone()
            )
        return (bool(row[0]), str(row[1]), float(row[2])) if row else None

    def put(self, address: str, deliverable: bool, reply: str, when: float) -> None:
        """Remember one result (replacing an older one); nothing when read-only."""
        if self.read_only:
            return
        with self._lock, self._connection() as db:  # the with-block commits
            db.execute(
                "INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?)", (address.lower(), int(deliverable), reply, when)
            )


class AddressVerifier:
    """The ``reject_unverified_recipient`` source: cached probe results, and probes for the rest.

    Args:
        cache: where results are kept.
        sender: the probes' ``MAIL FROM`` (``address_verify_sender``).
        positive_expire, negative_expire, positive_refresh, negative_refresh, timeout: seconds (module docstring).
    """

    name = "reject_unverified_recipient"

    def __init__(
        self,
        cache: VerifyCache,
        sender: str,
        *,
        positive_expire: float,
        negative_expire: float,
        positive_refresh: float,
        negative_refresh: float,
        timeout: float,
    ) -> None:
        self.cache = cache
        self.sender = sender
        self.positive_expire, self.negative_expire = positive_expire, negative_expire
        self.positive_refresh, self.negative_refresh = positive_refresh, negative_refresh
        self.timeout = timeout
        self.prober: Callable[[str, str], Awaitable[Reply]] | None = None  # attached by the app (the relay's)
        self._refreshing: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: Config) -> AddressVerifier | None:
        """The verifier ``config`` asks for (``reject_unverified_recipient = true``), or None."""
        if not config.reject_unverified_recipient:
            return None
        sender = config.address_verify_sender or f"double-bounce@{config.myhostname}"
        return cls(
            VerifyCache(config.state_dir / CACHE_FILE),
            sender,
            positive_expire=config.address_verify_positive_expire_time,
            negative_expire=config.address_verify_negative_expire_time,
            positive_refresh=config.address_verify_positive_refresh_time,
            negative_refresh=config.address_verify_negative_refresh_time,
            timeout=config.address_verify_timeout,
        )

    async def check(self, address: str) -> Answer:
        """KNOWN or UNKNOWN from the cache or a probe; UNVERIFIED when the probe cannot tell."""
        now = time.time()
        cached = await asyncio.to_thread(self.cache.get, address)
        if cached is not None:
            deliverable, text, updated = cached
            age = now - updated
            if age < (self.positive_expire if deliverable else self.negative_expire):
                if age >= (self.positive_refresh if deliverable else self.negative_refresh):
                    self._refresh(address)
                log.info(
                    "recipients: %s %s (address verification cache, %.0f s old)",
                    address,
                    "deliverable" if deliverable else "undeliverable",
                    age,
                )
                return Answer(Lookup.KNOWN if deliverable else Lookup.UNKNOWN, text)
        return await self._probe(address)

    async def _probe(self, address: str) -> Answer:
        if self.prober is None:
            return Answer(Lookup.UNAVAILABLE, "address verification is not running")
        try:
            reply = await asyncio.wait_for(self.prober(self.sender, address), self.timeout)
        except TimeoutError:
            return Answer(Lookup.UNVERIFIED, f"no answer from the next hop within {self.timeout:g} s")
        log.info("recipients: address verification of %s: %s", address, reply)
        if reply.is_transient:
            return Answer(Lookup.UNVERIFIED, str(reply))
        deliverable = reply.is_success
        await asyncio.to_thread(self.cache.put, address, deliverable, str(reply), time.time())
        return Answer(Lookup.KNOWN if deliverable else Lookup.UNKNOWN, str(reply))

    def _refresh(self, address: str) -> None:
        """Probe ``address`` again in the background; the cached answer stands meanwhile."""

        async def refresh() -> None:
            await self._probe(address)

        task = asyncio.get_running_loop().create_task(refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)
