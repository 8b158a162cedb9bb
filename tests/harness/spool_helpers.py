"""Spool fixtures the unit tests share: a message, a fixed clock, records, and a slowed group commit."""

from __future__ import annotations

import ipaddress
import threading
import time

from gateway.envelope import ClientInfo
from gateway.spool import RecipientStatus, Spool, SpoolEntry, new_queue_id
from gateway.spool.commit import PendingCommit

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n.dot\r\n"
NOW = 1_700_000_000.0


def make_entry(
    queue_id: str | None = None,
    *,
    arrival: float = NOW,
    sender: str = "a@example.org",
    recipients: tuple[str, ...] = ("b@example.net",),
) -> SpoolEntry:
    return SpoolEntry(
        queue_id=queue_id or new_queue_id(arrival),
        arrival=arrival,
        sender=sender,
        recipients=[RecipientStatus(address) for address in recipients],
        client=ClientInfo(ipaddress.ip_address("192.0.2.10"), 40000, "smtp", helo="client.example.org"),
        message_size=0,
        message_sha256="",
    )


def files_under(spool: Spool) -> list[str]:
    """Every regular file in the spool except the lock, as relative paths."""
    return sorted(
        str(path.relative_to(spool.root)) for path in spool.root.rglob("*") if path.is_file() and path.name != "lock"
    )


def slowed(spool: Spool, delay: float, started: threading.Event | None = None) -> list[int]:
    """Make each commit_many take ``delay`` seconds longer (``started`` is set when one begins);
    returns the batch sizes seen."""
    sizes: list[int] = []
    real = spool.commit_many

    def slow(batch: list[PendingCommit]) -> None:
        sizes.append(len(batch))
        if started is not None:
            started.set()
        time.sleep(delay)
        real(batch)

    spool.commit_many = slow  # type: ignore[method-assign]
    return sizes
