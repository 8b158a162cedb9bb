"""gateway.smtpd.data_reader against a line-by-line model of aiosmtpd's DATA reader, over every way of splitting.

The model is aiosmtpd 1.4's ``smtp_DATA`` loop written out (lines end at
CRLF, the line ``.`` ends the data, a leading dot is removed, a line over 1001
octets with its CRLF or more than the size limit refuses the message; the
first line over a limit decides which, a line over both counting as too long). The
reader must give the same outcome and text, whatever pieces the stream arrives
in, and leave what followed the end-of-data line in the stream.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smtpd.data_reader import DataOutcome, read_data
from tests.harness.samples import CORPUS as CORPUS_DIR


def model(stream: bytes, size_limit: int | None, line_limit: int = 1001) -> tuple[DataOutcome, bytes, bytes]:
    """(outcome, text, what follows) as aiosmtpd reads ``stream`` after its 354."""
    outcome, kept, size, position = DataOutcome.COMPLETE, [], 0, 0
    while True:
        end = stream.find(b"\r\n", position)
        assert end >= 0, "the stream has an end-of-data line"
        line = stream[position : end + 2]
        position = end + 2
        if line == b".\r\n":
            break
        size += len(line)
        if outcome is DataOutcome.COMPLETE:
            if len(line) > line_limit:
                outcome = DataOutcome.TOO_LONG
            elif size_limit is not None and size > size_limit:
                outcome = DataOutcome.TOO_BIG
            else:
                kept.append(line[1:] if line.startswith(b".") else line)
    text = b"".join(kept) if outcome is DataOutcome.COMPLETE else b""
    return outcome, text, stream[position:]


def read(pieces: list[bytes], size_limit: int | None, **options: object) -> tuple[DataOutcome, bytes, bytes, int]:
    async def main() -> tuple[DataOutcome, bytes, bytes, int]:
        reader = asyncio.StreamReader(limit=1001)
        for piece in pieces:
            reader.feed_data(piece)
        reader.feed_eof()
        result = await read_data(reader, size_limit=size_limit, **options)  # type: ignore[arg-type]
        # a message kept in its file comes as a FileText; its octets compare as bytes
        text = result.content if isinstance(result.content, bytes) else result.content[:]
        return result.outcome, text, await reader.read(), result.received

    return asyncio.run(main())


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in zip(points, points[1:])]


def check(stream: bytes, pieces: list[bytes], size_limit: int | None = None, **options: object) -> None:
    outcome, text, after = model(stream, size_limit)
    got_outcome, got_text, got_after, received = read(pieces, size_limit, **options)
    assert (got_outcome, got_text, got_after) == (outcome, text, after)
    assert received == len(stream) - len(after)


LINES = st.sampled_from(
    [
        b".",
        b"..",
        b".x",
        b"x",
        b"",
        b"x.",
        b"\r",
        b"\n",
        b".\r",
        b".\n",
        b"\r.",
        b"\n.",
        b"a" * 999,
        b"b" * 1000,
        b"." + b"c" * 999,
        b"From me",
    ]
)


@given(
    st.lists(LINES, max_size=12),
    st.lists(st.integers(0, 5000), max_size=6),
    st.booleans(),
    st.sampled_from([None, 0, 5, 1500]),
)
@settings(max_examples=400, deadline=None)
def test_same_as_aiosmtpd_for_any_lines_and_any_pieces(lines, cuts, pipelined, size_limit):
    stream = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
    if pipelined:
        stream += b"MAIL FROM:<next@example.com>\r\nRCPT TO:<x@example.org>\r\n.\r\n"
    check(stream, split(stream, cuts), size_limit)


@pytest.mark.parametrize(
    "stream",
    [
        b".\r\n",  # an empty message
        b".\r\nQUIT\r\n",  # ... and the next command
        b"..\r\n.\r\n",
        b".x\r\n.\r\n",
        b"x\r\n.\r\n",
        b"\r\n.\r\n",
        b"a\r\n..\r\n...\r\n.\r\nNOOP\r\n",
        b"bare\n.\nstays\r.\rin\r\n.\r\n",  # only CRLF . CRLF ends it (smuggling)
    ],
)
def test_every_single_split_point(stream):
    for cut in range(len(stream) + 1):
        check(stream, [stream[:cut], stream[cut:]])
    check(stream, [bytes([b]) for b in stream])  # a byte at a time


@pytest.mark.parametrize(
    "length, outcome", [(999, DataOutcome.COMPLETE), (1000, DataOutcome.TOO_LONG), (70_000, DataOutcome.TOO_LONG)]
)
def test_line_limit(length, outcome):
    stream = b"Subject: x\r\n" + b"y" * length + b"\r\nafter\r\n.\r\nQUIT\r\n"
    check(stream, split(stream, [5, 600, 1200, 40_000]))
    assert model(stream, None)[0] is outcome


def test_size_limit_counts_the_text_as_sent():
    stream = b"..12345\r\n.\r\n"  # 9 octets as sent, 8 after unstuffing
    check(stream, [stream], size_limit=9)
    assert read([stream], 9)[0] is DataOutcome.COMPLETE
    assert read([stream], 8)[0] is DataOutcome.TOO_BIG


@pytest.mark.parametrize("kind", ["lines", "empty", "dots"])
def test_large_messages_spill_to_a_file_and_come_back_whole(tmp_path, kind):
    line = {"lines": b"x" * 76 + b"\r\n", "empty": b"\r\n", "dots": b"..stuffed\r\n"}[kind]
    stream = line * (3_000_000 // len(line)) + b".\r\nQUIT\r\n"
    pieces = split(stream, list(range(0, len(stream), 65_521)))
    check(stream, pieces, spill_dir=tmp_path, spill_bytes=100_000)
    assert os.listdir(tmp_path) == []  # the spill file has no name, and it is gone


def test_a_client_that_leaves_mid_data_raises():
    with pytest.raises(asyncio.IncompleteReadError):
        read([b"Subject: x\r\n\r\nno end"], None)


def test_the_corpus_reads_back_exactly(tmp_path):
    files = sorted(CORPUS_DIR.rglob("*.eml"))
    assert files, CORPUS_DIR
    for path in files:
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not raw.endswith(b"\r\n"):
            raw += b"\r\n"
        stuffed = raw.replace(b"\r\n.", b"\r\n..")
        stuffed = (b"." + stuffed) if stuffed.startswith(b".") else stuffed
        stream = stuffed + b".\r\n"
        outcome, text, _ = model(stream, None)
        check(stream, split(stream, [1, 4096, 65536]), spill_dir=tmp_path, spill_bytes=10_000)
        if outcome is DataOutcome.COMPLETE:
            assert text == raw, path


def test_the_memory_budget_is_shared_and_a_message_over_it_stays_in_its_file(tmp_path):
    from gateway.message import FileText
    from gateway.smtpd.data_reader import MemoryBudget

    budget = MemoryBudget(1000)
    small = b"x" * 98 + b"\r\n"

    async def main():
        def stream(data):
            reader = asyncio.StreamReader(limit=1001)
            reader.feed_data(data + b".\r\n")
            reader.feed_eof()
            return reader

        first = await read_data(stream(small * 6), size_limit=None, budget=budget, spill_dir=tmp_path)
        assert first.outcome is DataOutcome.COMPLETE and first.reserved == 600 == budget.used
        # 600 more do not fit next to the first: kept in a file, and handed on as that file (no budget)
        second = await read_data(stream(small * 6), size_limit=None, budget=budget, spill_dir=tmp_path)
        assert second.outcome is DataOutcome.COMPLETE and isinstance(second.content, FileText)
        assert second.content[:] == small * 6 and second.reserved == 0 and budget.used == 600
        budget.give(first.reserved)
        assert list(second.content.chunks(size=200)) == [small * 2] * 3
        assert os.listdir(tmp_path) == []  # unnamed files: nothing to clean up
        # alone, even a message over the whole budget is held in memory (below spill_bytes)
        third = await read_data(stream(small * 30), size_limit=None, budget=budget, spill_dir=tmp_path)
        assert third.outcome is DataOutcome.COMPLETE and third.content == small * 30
        assert budget.used == third.reserved == 3000
        budget.give(third.reserved)
        # past the budget's spill size, even a small message is a file
        budget.spill_bytes = 500
        fourth = await read_data(stream(small * 6), size_limit=None, budget=budget, spill_dir=tmp_path)
        assert isinstance(fourth.content, FileText) and fourth.content[:] == small * 6 and budget.used == 0
        refused = await read_data(stream(small * 4 + b"y" * 2000 + b"\r\n"), size_limit=None, budget=budget)
        assert refused.outcome is DataOutcome.TOO_LONG and refused.reserved == 0
        reader = asyncio.StreamReader(limit=1001)
        reader.feed_data(small * 5)
        reader.feed_eof()
        with pytest.raises(asyncio.IncompleteReadError):
            await read_data(reader, size_limit=None, budget=budget)
        assert budget.used == 0  # nothing kept after a refusal or a lost client

    asyncio.run(main())


@pytest.mark.parametrize("spill_bytes", [1 << 20, 1000], ids=["in memory", "in a file"])
def test_nul_and_8bit_octets_are_found_as_the_text_arrives(tmp_path, spill_bytes):
    def found(text: bytes) -> tuple[bool, bool]:
        async def main() -> tuple[bool, bool]:
            reader = asyncio.StreamReader()
            reader.feed_data(text + b".\r\n")
            result = await read_data(reader, size_limit=None, spill_dir=tmp_path, spill_bytes=spill_bytes)
            assert result.outcome is DataOutcome.COMPLETE
            return result.has_nul, result.has_8bit

        return asyncio.run(main())

    filler = b"x" * 70 + b"\r\n"
    assert found(b"Subject: a\r\n\r\n" + filler * 40) == (False, False)
    assert found(b"Subject: a\r\n\r\n" + filler * 40 + b"z\x00z\r\n") == (True, False)  # in the last piece
    assert found("Subject: é\r\n\r\n".encode() + filler * 40) == (False, True)  # in the first
    assert found(b"S: \x00\r\n\r\n" + filler * 40 + "\u00e9\r\n".encode()) == (True, True)
