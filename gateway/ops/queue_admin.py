"""``gateway queue``: list, show, flush, delete, hold, release (Postfix mailq/postqueue/postsuper).

Safe against a running gateway: every operation is an atomic rename or an
unlink of a record *outside* ``active/`` (the worker only rewrites records it
has claimed into ``active/``). A message being delivered right now cannot be
changed; the command says so and can be repeated a moment later.

What came from the network (addresses, headers, next hops' replies) is shown
through :func:`gateway.safe_text.printable`: no byte of it acts on the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.errors import NotInQueue, SpoolError
from gateway.safe_text import printable
from gateway.spool import QueueState, Spool
from gateway.spool.files import read_regular_file
from gateway.spool.queue_id import arrival_of

LISTED_STATES = (QueueState.ACTIVE, QueueState.INCOMING, QueueState.DEFERRED, QueueState.HOLD, QueueState.CORRUPT)


class MessageBusy(SpoolError):
    """The message is being delivered (its record is in ``active/``)."""


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One ``gateway queue list`` line's facts (what mailq shows)."""

    queue_id: str
    state: str
    size: int
    arrival: float
    sender: str
    recipients: tuple[str, ...]
    next_attempt: float | None
    last_error: str | None


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def rows(spool: Spool) -> list[QueueRow]:
    """Every queued message, oldest first within each state."""
    result = []
    listed = set()
    for entry in spool.entries(LISTED_STATES):
        listed.add(entry.queue_id)
        errors = [f"<{r.address}>: {r.last_reply}" for r in entry.pending() if r.last_reply]
        result.append(
            QueueRow(
                queue_id=entry.queue_id,
                state=entry.state.value,
                size=entry.message_size,
                arrival=entry.arrival,
                sender=entry.sender,
                recipients=tuple(r.address for r in entry.pending()),
                next_attempt=entry.next_attempt if entry.state is QueueState.DEFERRED else None,
                last_error="; ".join(errors) or None,
            )
        )
    for queue_id in spool.ids(QueueState.CORRUPT):
        if queue_id not in listed:  # an unreadable record still shows, so it can be deleted
            result.append(
                QueueRow(
                    queue_id, QueueState.CORRUPT.value, 0, arrival_of(queue_id), "?", (), None, "unreadable record"
                )
            )
    return result


def format_list(queue_rows: list[QueueRow]) -> str:
    """mailq-style text: one header line per message, then recipients and last error."""
    if not queue_rows:
        return "Mail queue is empty"
    lines = [
        f"{'Queue ID':<19} {'State':<8} {'Size':>9} {'Arrival (UTC)':<19}  {'Next attempt (UTC)':<19}  Sender/Recipient"
    ]
    for row in queue_rows:
        next_at = _when(row.next_attempt) if row.next_attempt else "-"
        lines.append(
            f"{row.queue_id:<19} {row.state:<8} {row.size:>9} {_when(row.arrival):<19}  {next_at:<19}  "
            f"{printable(row.sender) or 'MAILER-DAEMON'}"
        )
        if row.last_error:
            lines.append(f"{'':<40}({printable(row.last_error)})")
        for recipient in row.recipients:
            lines.append(f"{'':<80}{printable(recipient)}")
        lines.append("")
    total = sum(row.size for row in queue_rows)
    lines.append(f"-- {total // 1024} Kbytes in {len(queue_rows)} Requests.")
    return "\n".join(lines)


def show(spool: Spool, queue_id: str) -> str:
    """The record (as JSON) and the message headers of one message, control characters shown as ``cat -v``."""
    entry = spool.find(queue_id)
    try:
        header = read_regular_file(spool.message_path(entry.queue_id)).split(b"\r\n\r\n", 1)[0]
    except (OSError, ValueError) as error:
        raise SpoolError(f"{entry.queue_id}: cannot read the message file: {error}") from None
    lines = [
        entry.to_json().decode("utf-8", "surrogateescape"),
        "",
        *header.decode("utf-8", "surrogateescape").split("\r\n"),
    ]
    return f"state: {entry.state.value}\n" + "\n".join(printable(line) for line in lines)


def _move(spool: Spool, queue_id: str, sources: tuple[QueueState, ...], target: QueueState) -> None:
    # One rename, no rewrite: rewriting a record the worker may claim meanwhile would recreate it.
    state = spool.locate(queue_id)
    if state is QueueState.ACTIVE:
        raise MessageBusy(f"{queue_id}: being delivered right now; try again in a moment")
    if state not in sources:
        raise NotInQueue(f"{queue_id}: is {state.value}, not " + " or ".join(s.value for s in sources))
    if state is not target:
        spool.move(queue_id, state, target)


def flush(spool: Spool, queue_id: str | None = None) -> list[str]:
    """Move deferred mail (one ID or all) to incoming for immediate delivery (postqueue -f / -i)."""
    ids = [queue_id] if queue_id is not None else spool.ids(QueueState.DEFERRED)
    done = []
    for one in ids:
        try:
            _move(spool, one, (QueueState.DEFERRED, QueueState.INCOMING), QueueState.INCOMING)
        except NotInQueue:
            if queue_id:
                raise
            continue  # delivered or claimed meanwhile
        done.append(one)
    return done


def hold(spool: Spool, queue_id: str) -> None:
    """Put a message on hold (postsuper -h)."""
    _move(spool, queue_id, (QueueState.INCOMING, QueueState.DEFERRED), QueueState.HOLD)


def release(spool: Spool, queue_id: str) -> None:
    """Release a held message for delivery now (postsuper -H)."""
    _move(spool, queue_id, (QueueState.HOLD,), QueueState.INCOMING)


def delete(spool: Spool, queue_id: str | None = None, all_messages: bool = False) -> list[str]:
    """Delete one message, or all not being delivered (postsuper -d ID / -d ALL)."""
    if all_messages:
        deleted = []
        for state in LISTED_STATES:
            if state is QueueState.ACTIVE:
                continue
            for one in spool.ids(state):
                try:
                    spool.remove(one, state)
                    deleted.append(one)
                except NotInQueue:
                    continue
        return deleted
    assert queue_id is not None
    state = spool.locate(queue_id)
    if state is QueueState.ACTIVE:
        raise MessageBusy(f"{queue_id}: being delivered right now; try again in a moment")
    spool.remove(queue_id, state)
    return [queue_id]
