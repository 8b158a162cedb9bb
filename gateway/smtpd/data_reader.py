"""The DATA reader: the message text of one SMTP transaction, in bounded memory (RFC 5321 §4.1.1.4, §4.5.2).

aiosmtpd's reader keeps one object per line and joins them at the end: an
empty line (2 octets) costs about 60 bytes of memory, so 9 MB of empty lines
took 730 MB. This reader takes what the connection delivers in large pieces,
finds the end-of-data line, removes the transparency dots and checks each
piece at once, and keeps the result in one place: a list of pieces while the message is small, an
unnamed file on the spool's file system once it is larger than
``spill_bytes`` (or once the sessions' shared memory budget is used up). A
small message is one ``bytes`` object; a large one stays in its file and is
handed on as a :class:`~gateway.message.FileText`, which the checks read in
parts and the spool copies in the kernel: a 50 MB message costs a few chunks
of memory, not 50 MB.

Same rules as aiosmtpd's reader, which it replaces (so the same replies):

* the data ends at the first ``CRLF . CRLF``; a line that is ``.`` and
  another ending (bare LF or CR) does not end it, nor is it unstuffed;
* a line starting with ``.`` loses that dot (RFC 5321 §4.5.2);
* a line of more than ``line_limit`` octets with its CRLF (aiosmtpd: 1001)
  makes the whole message refused with ``500 5.5.2`` once the client has
  finished sending it;
* more than ``size_limit`` octets as sent (dots included) make it refused with
  ``552 5.3.4``, after the end-of-data line too (RFC 5321 §4.2.5);
* the first line over a limit decides which; a line over both is too long.

Bytes the client sent after the end-of-data line (PIPELINING, RFC 2920) stay
in the stream reader for the next command.
"""

from __future__ import annotations

import asyncio
import enum
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gateway.message import FileText

END_OF_DATA = b"\r\n.\r\n"
LINE_LIMIT = 1001  # octets of a line with its CRLF (aiosmtpd's line_length_limit)
SPILL_BYTES = 1 << 20  # a message larger than this is kept in a file while it arrives
READ_BYTES = 1 << 18  # most octets taken from the stream reader at a time


class DataOutcome(enum.Enum):
    """How a DATA phase ended."""

    COMPLETE = "complete"  # the message is in DataResult.content
    TOO_LONG = "too_long"  # a line over the limit: refuse with 500 5.5.2
    TOO_BIG = "too_big"  # over size_limit: refuse with 552 5.3.4


class MemoryBudget:
    """Octets of message text that all SMTP sessions together may hold in memory.

    A session takes from it while its message is kept in memory (as it
    arrives, then while it is checked and committed) and gives it back when
    its DATA reply is written. Beyond the budget a message arriving is kept in
    a file instead (and stays there), so no message is refused for memory.

    Args:
        limit: octets (``smtpd_data_memory_limit``).
        spill_bytes: a message larger than this many octets goes to a file
            even when the budget has room (``smtpd_data_spill_size``).
    """

    def __init__(self, limit: int, spill_bytes: int = SPILL_BYTES) -> None:
        self.limit = limit
        self.spill_bytes = spill_bytes
        self.used = 0

    def try_take(self, size: int) -> bool:
        """Take ``size`` octets; False (nothing taken) when they would exceed the limit."""
        if self.used and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        """Give back ``size`` octets taken earlier."""
        self.used -= size


@dataclass(frozen=True, slots=True)
class DataResult:
    """What :func:`read_data` read.

    Attributes:
        outcome: whether the message is complete or why it is refused.
        content: the message without transparency dots and without the
            end-of-data line (b"" unless ``outcome`` is COMPLETE).
        received: octets read from the client, end-of-data line included.
        reserved: octets taken from the budget for ``content``; the caller
            gives them back (:meth:`MemoryBudget.give`) when done with it.
        has_nul: ``content`` has a NUL octet (found as it arrived: a file-held message is not read again).
        has_8bit: ``content`` has an octet above 127.
    """

    outcome: DataOutcome
    content: bytes | FileText
    received: int
    reserved: int = 0
    has_nul: bool = False
    has_8bit: bool = False


class _Collector:
    """Unstuffed message text: pieces in memory under the budget, else in an unnamed file."""

    def __init__(self, budget: MemoryBudget | None, spill_dir: Path | None, spill_bytes: int) -> None:
        self.budget = budget
        self.spill_dir = spill_dir
        self.spill_bytes = spill_bytes
        self.pieces: list[bytes] = []
        self.size = 0
        self.held = 0  # octets taken from the budget
        self.file: BinaryIO | None = None
        self.has_nul = False
        self.has_8bit = False

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        self.size += len(piece)
        # memchr and an ASCII scan while the piece is at hand: the strict-input checks never read the text again
        self.has_nul = self.has_nul or b"\x00" in piece
        self.has_8bit = self.has_8bit or not piece.isascii()
        if self.file is None:
            if self.size <= self.spill_bytes and self._take(len(piece)):
                self.pieces.append(piece)
                return
            self.file = tempfile.TemporaryFile(dir=self.spill_dir, prefix="data-")  # O_TMPFILE: no name
            for earlier in self.pieces:
                self.file.write(earlier)
            self.pieces = []
            self.give_back()
        self.file.write(piece)

    def content(self) -> bytes | FileText:
        """The whole text: one ``bytes`` object (held under the budget), or the file it was written to."""
        if self.file is None:
            return b"".join(self.pieces)
        self.file.flush()
        # Stays in its unnamed file: the checks read the parts they need, the commit copies it in the kernel.
        return FileText(self.file.fileno(), self.size)

    def close(self) -> None:
        """Drop the text (the budget is given back separately: :meth:`give_back`)."""
        self.pieces = []
        if self.file is not None:
            self.file.close()
            self.file = None

    def _take(self, size: int) -> bool:
        if self.budget is not None and not self.budget.try_take(size):
            return False
        self.held += size
        return True

    def give_back(self) -> None:
        """Give the budget back what this text held."""
        if self.budget is not None:
            self.budget.give(self.held)
        self.held = 0


class _Unstuffer:
    """Splits the stream into lines, finds the end-of-data line, removes dots, checks lengths.

    Pieces may end anywhere: the start of a line whose CRLF has not come yet is
    carried over to the next piece. Once a line is too long or the message too
    big, nothing more is stored, but the end-of-data line is still looked for.
    """

    def __init__(self, collector: _Collector, line_limit: int, size_limit: int | None) -> None:
        self.collector = collector
        self.line_limit = line_limit
        self.size_limit = size_limit
        self.carry = b""  # the start of a line whose CRLF has not come yet
        self.size = 0  # octets of message text as sent (dots included)
        self.outcome = DataOutcome.COMPLETE

    def feed(self, piece: bytes) -> bytes | None:
        """Take the next piece of the stream.

        Returns:
            None while the message goes on; once the end-of-data line has come,
            the bytes that followed it (the client's next commands), possibly b"".
        """
        data = self.carry + piece if self.carry else piece
        cut = data.rfind(b"\r\n") + 2
        if cut == 1:  # no CRLF: the line goes on
            self._carry(data)
            return None
        lines, carry = data[:cut], data[cut:]
        # "lines" starts at a line start and ends with CRLF; the end-of-data line is "." alone.
        rest: bytes | None
        if lines.startswith(b".\r\n"):
            text, rest = b"", lines[3:]
        else:
            end = lines.find(END_OF_DATA)
            text, rest = (lines, None) if end < 0 else (lines[: end + 2], lines[end + 5 :])
        self._store(text)
        if rest is None:
            self._carry(carry)
            return None
        self.carry = b""
        return rest + carry

    def _store(self, text: bytes) -> None:
        if not text or self.outcome is not DataOutcome.COMPLETE:
            return
        too_big = self.size_limit is not None and self.size + len(text) > self.size_limit
        if too_big or max(map(len, text.split(b"\r\n"))) + 2 > self.line_limit:
            self._refuse(self._first_fault(text))
            return
        self.size += len(text)
        self.collector.add((text[1:] if text[:1] == b"." else text).replace(b"\r\n.", b"\r\n"))

    def _first_fault(self, text: bytes) -> DataOutcome:
        # The first line over a limit decides the reply; a line over both is too long.
        for line in text.split(b"\r\n")[:-1]:
            self.size += len(line) + 2
            if len(line) + 2 > self.line_limit:
                return DataOutcome.TOO_LONG
            if self.size_limit is not None and self.size > self.size_limit:
                return DataOutcome.TOO_BIG
        raise AssertionError("called only when a line of text is over a limit")

    def _carry(self, partial: bytes) -> None:
        if len(partial) + 2 <= self.line_limit:
            self.carry = partial
            return
        if self.outcome is DataOutcome.COMPLETE:
            self._refuse(DataOutcome.TOO_LONG)
        # A line this long is not the end-of-data line: only whether it ends in CR still matters.
        self.carry = b"x\r" if partial.endswith(b"\r") else b"x"

    def _refuse(self, outcome: DataOutcome) -> None:
        self.outcome = outcome
        self.collector.close()
        self.collector.give_back()


async def read_data(
    reader: asyncio.StreamReader,
    *,
    size_limit: int | None,
    budget: MemoryBudget | None = None,
    spill_dir: Path | None = None,
    line_limit: int = LINE_LIMIT,
    spill_bytes: int | None = None,
) -> DataResult:
    """Read one message after the 354 reply, up to and including the end-of-data line.

    Args:
        reader: the session's stream reader. What the client sent after the
            end-of-data line is put back at its front (``StreamReader`` has no
            public way to give bytes back; aiosmtpd's STARTTLS clears the same buffer).
        size_limit: most octets of message text accepted as sent (``message_size_limit``),
            None for no limit.
        budget: the memory shared by all sessions; None for no limit.
        spill_dir: where the unnamed file of a large message is made (the
            spool's ``tmp/``, so it is on the spool's file system); None: the
            system's temporary folder.
        line_limit: most octets of one line with its CRLF.
        spill_bytes: message size from which the text is kept in a file
            (default: the budget's, else :data:`SPILL_BYTES`).

    Returns:
        The outcome, the message text (for COMPLETE), the octets received and
        the octets of ``budget`` held for the text.

    Raises:
        asyncio.IncompleteReadError: the client closed the connection before
            the end-of-data line (aiosmtpd cancels the session task then anyway).
        OSError: the spill file cannot be created or written (a full spool).
    """
    if spill_bytes is None:
        spill_bytes = budget.spill_bytes if budget is not None else SPILL_BYTES
    collector = _Collector(budget, spill_dir, spill_bytes)
    unstuffer = _Unstuffer(collector, line_limit, size_limit)
    received = 0
    done = False
    try:
        while True:
            piece = await reader.read(READ_BYTES)
            if not piece:
                raise asyncio.IncompleteReadError(b"", None)
            received += len(piece)
            rest = unstuffer.feed(piece)
            if rest is not None:
                break
        if rest:
            reader._buffer[:0] = rest  # type: ignore[attr-defined]  # pipelined commands, for the next readline
            received -= len(rest)
        if unstuffer.outcome is not DataOutcome.COMPLETE:
            return DataResult(unstuffer.outcome, b"", received)
        content = collector.content()
        done = True
        return DataResult(
            DataOutcome.COMPLETE, content, received, collector.held, collector.has_nul, collector.has_8bit
        )
    finally:
        collector.close()
        if not done:
            collector.give_back()
