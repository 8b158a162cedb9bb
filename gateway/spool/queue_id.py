"""Queue IDs: sortable by arrival, unique across restarts and processes."""

from __future__ import annotations

import re
import secrets
import time

QUEUE_ID_RE = re.compile(r"^[0-9A-F]{13}[0-9A-F]{6}$")


def new_queue_id(now: float | None = None) -> str:
    """Return a 19-character upper-case hex ID: 13 digits of microseconds since the epoch + 6 random.

    Like Postfix long queue IDs it sorts by time; the random part keeps IDs made in
    the same microsecond (or by two processes) apart.
    """
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:013X}{secrets.token_hex(3).upper()}"


def is_queue_id(text: str) -> bool:
    """True when ``text`` has the form of a queue ID (guards file names built from user input)."""
    return bool(QUEUE_ID_RE.match(text))


def arrival_of(queue_id: str) -> float:
    """The arrival time a queue ID carries, unix seconds (its first 13 hex digits are microseconds).

    Raises:
        ValueError: ``queue_id`` is not a queue ID.
    """
    if not is_queue_id(queue_id):
        raise ValueError(f"{queue_id!r} is not a queue ID")
    return int(queue_id[:13], 16) / 1_000_000
