"""gateway.relay.client.data_chunks: the DATA encoding in pieces equals aiosmtplib's whole-message encoding."""

from __future__ import annotations

import tempfile

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message import FileText
from gateway.relay.client import data_chunks
from tests.harness.samples import CORPUS


def file_text(message: bytes) -> FileText:
    """``message`` in an unnamed file, as the relay worker reads a large one back from the spool."""
    with tempfile.TemporaryFile() as handle:
        handle.write(message)
        handle.flush()
        return FileText(handle.fileno(), len(message))


def aiosmtplib_encoding(message: bytes) -> bytes:
    """What aiosmtplib's execute_data_command writes after DATA, without the final '.' line."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))


# Lines made of the characters that matter: dots, CR, LF, and a little text.
messages = st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"x", b"..", b"ab", b".\r\n", b"\n."]), max_size=60
).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(message=messages, chunk_bytes=st.integers(min_value=1, max_value=12))
def test_pieces_join_to_aiosmtplib_encoding(message: bytes, chunk_bytes: int) -> None:
    pieces = list(data_chunks(message, chunk_bytes))
    assert b"".join(pieces) == aiosmtplib_encoding(message)
    assert all(pieces)
    if message:  # read from a file in pieces of chunk_bytes: the same octets
        from_file = list(data_chunks(file_text(message), chunk_bytes))
        assert b"".join(from_file) == aiosmtplib_encoding(message) and all(from_file)


@pytest.mark.parametrize("message", [b"", b".", b"\r", b"\n", b"a\r", b".\r\n.\r\n", b"x\r\n.\r\n.."])
def test_edge_cases(message: bytes) -> None:
    assert b"".join(data_chunks(message, 1)) == aiosmtplib_encoding(message)


def test_pieces_are_bounded_and_cut_after_line_ends() -> None:
    message = b"".join(b"line %d\r\n" % n for n in range(100_000))  # about 1.2 MB
    pieces = list(data_chunks(message, 64 * 1024))
    assert b"".join(pieces) == message
    assert len(pieces) > 10
    assert all(len(piece) < 64 * 1024 + 20 and piece.endswith(b"\r\n") for piece in pieces)
    from_file = list(data_chunks(file_text(message), 64 * 1024))
    assert b"".join(from_file) == message and len(from_file) > 10
    assert all(len(piece) < 64 * 1024 + 20 and piece.endswith(b"\r\n") for piece in from_file)


def test_whole_corpus_encodes_as_aiosmtplib_does() -> None:
    files = sorted(path for path in CORPUS.rglob("*") if path.is_file())
    assert len(files) > 50, f"corpus missing at {CORPUS}"
    for path in files:
        message = path.read_bytes()
        assert b"".join(data_chunks(message, 512)) == aiosmtplib_encoding(message), path
        if message:
            assert b"".join(data_chunks(file_text(message), 512)) == aiosmtplib_encoding(message), path
