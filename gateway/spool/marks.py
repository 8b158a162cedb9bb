"""Done marks: a recipient's 250 reaches the kernel the moment the next hop says it (issue 17).

A message's record is rewritten (tmp + fsync + rename + directory fsync) or
removed (batched with other removals, :meth:`Spool.remove_many`) only when its
delivery pass ends, in a spool thread. Until then a crash would deliver again
every recipient the next hop had already accepted. So, as Postfix marks each
recipient done in its queue file right after the 250 and deletes the file
later, the relay worker makes each 2xx reach the kernel before it does anything
else with that connection, with one system call on the event loop and no fsync,
made from the transport's data callback the moment the reply is parsed
(:mod:`gateway.relay.reply_watch`), before any task runs:

* when the 2xx finishes the message (every recipient delivered), the record is
  renamed from ``active/`` to ``done/<id>.json`` (:meth:`Spool.finish_record`);
  the batched removal then fsyncs ``active/`` and deletes the record and the
  message file in a spool thread, as it deleted them before. This is the hot
  path (one recipient per message). A rename, not an unlink: unlinking the last
  name of a file frees its inode and blocks (ext4's orphan list, a journal
  handle), which under load blocked the event loop for milliseconds (median
  0.3-0.6 ms, p90 3-7 ms on this project's test machine); a rename between two
  directories took 50 µs (p90 90 µs) in the same test;
* otherwise (some recipients deferred, or still in flight to another next hop):
  the recipients' indices in the record are appended to ``done/<id>.done``
  (:func:`append`; ``open(O_APPEND|O_CREAT)`` + one ``write`` + ``close``), one
  line of ASCII digits each. The record itself is not touched: rewriting it in
  place would need its own fsync protocol against a torn write, an append does
  not (and the record format stays as it is).

A process crash keeps both (the kernel has them). A power loss may lose them:
the message is then delivered again to those recipients, never lost, the same
promise as before; so the marks are never fsynced, and the rename is made
durable by the batched removal's directory fsync.

Who reads them: :meth:`Spool.read` folds the marks into the record it returns
(:func:`fold`: each marked PENDING or DEFERRED recipient becomes DELIVERED), so
the next pass after a crash (also when a worker process restarts alone),
``gateway queue``, and anything else reading records sees exact per-recipient
states. The marks file is deleted once a record that includes them is durable
(:meth:`Spool.write`) or the message is removed (:meth:`Spool.remove_many`).
At start :func:`gateway.spool.recovery.recover` deletes everything in ``done/``
whose queue ID has no queued record: the records of messages delivered to all
(with their message files), and marks left over. A malformed line (a torn tail
after a power loss) is ignored: at worst a duplicate.

Only 2xx outcomes are marked. A 5xx is final only once its DSN is committed
(the DSN first, then the record, so a crash duplicates a DSN but never loses
one), and a 4xx changes nothing a crash could repeat wrongly. A recipient whose
success notice we send ourselves (RFC 3461 NOTIFY=SUCCESS to a next hop
without DSN) is not marked either, so the notice cannot be lost.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from gateway.spool import files as spool_files
from gateway.spool.entry import RecipientState, SpoolEntry

if TYPE_CHECKING:
    from gateway.spool.store import Spool

log = logging.getLogger("gateway.spool")

MARKS_DIR = "done"
SUFFIX = ".done"
MAX_MARKS_BYTES = 1 << 20  # a line per recipient (smtpd_recipient_limit 1000): more is garbage, not read


def marks_path(spool: Spool, queue_id: str) -> str:
    """The marks file of ``queue_id`` (a plain string: this is on the relay's hot path)."""
    return f"{spool.root}{os.sep}{MARKS_DIR}{os.sep}{queue_id}{SUFFIX}"


def finished_path(spool: Spool, queue_id: str) -> str:
    """Where the record of ``queue_id`` waits for deletion once every recipient is delivered."""
    return f"{spool.root}{os.sep}{MARKS_DIR}{os.sep}{queue_id}.json"


def append(spool: Spool, queue_id: str, indices: list[int]) -> None:
    """Append ``indices`` (positions in the record's recipient list) to the marks of ``queue_id``; no fsync.

    Raises:
        OSError: the file cannot be created or written (ENOSPC on a full spool: the marks are lost,
            which costs a duplicate after a crash, never a message).
    """
    fd = os.open(marks_path(spool, queue_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # One write(2) of a few bytes: all of it reaches the page cache, or none of it.
        spool_files.write_all(fd, "".join(f"{index}\n" for index in indices).encode("ascii"))
    finally:
        os.close(fd)


def marked(spool: Spool, queue_id: str) -> set[int]:
    """The recipient indices marked delivered for ``queue_id`` (empty when there are no marks).

    Read with the checks of :func:`gateway.spool.files.read_regular_file` (the queue commands run as
    root). A line that is not a decimal index is skipped; a marks file that is a link, a FIFO, a device,
    too large or unreadable counts as none (logged): at worst a duplicate, never a lost recipient.
    """
    path = spool.root / MARKS_DIR / f"{queue_id}{SUFFIX}"
    try:
        raw = spool_files.read_regular_file(path, MAX_MARKS_BYTES)
    except FileNotFoundError:
        return set()
    except (ValueError, OSError) as error:
        log.warning("%s: done marks ignored: %s", queue_id, error)
        return set()
    return {int(line) for line in raw.split(b"\n") if line.isdigit() and len(line) <= 6}


def fold(spool: Spool, entry: SpoolEntry) -> SpoolEntry:
    """``entry`` with its marked recipients DELIVERED (in place; returned for chaining)."""
    for index in marked(spool, entry.queue_id):
        if index < len(entry.recipients) and not entry.recipients[index].is_final:
            entry.recipients[index].state = RecipientState.DELIVERED
    return entry


def discard(spool: Spool, queue_id: str, *, finished: bool = False) -> None:
    """Delete the marks of ``queue_id`` if there are any (call once the record holds them, or is gone);
    with ``finished``, also its record in ``done/``.

    Raises:
        OSError: an error other than there being no such file.
    """
    for path in (marks_path(spool, queue_id), *((finished_path(spool, queue_id),) if finished else ())):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def discard_orphans(spool: Spool, known: set[str]) -> int:
    """Delete every file of ``done/`` whose queue ID is not in ``known`` (IDs with a queued record): the
    records of messages delivered to all, and marks left over; returns how many.

    Raises:
        OSError: when the directory cannot be listed or a file removed.
    """
    directory = spool.root / MARKS_DIR
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:  # a spool made before there were marks
        return 0
    for name in names:
        if name.partition(".")[0] not in known:
            (directory / name).unlink()
            removed += 1
    return removed
