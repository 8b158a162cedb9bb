"""gateway.message.header_has_bare_cr: a CR outside CRLF in the header section, for bytes and file-held text."""

from __future__ import annotations

import tempfile

import pytest

from gateway.message import FileText, header_has_bare_cr


def file_text(message: bytes) -> FileText:
    """``message`` in an unnamed file, as a large message is held after DATA."""
    with tempfile.TemporaryFile() as handle:
        handle.write(message)
        handle.flush()
        return FileText(handle.fileno(), len(message))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"Subject: hi\rBcc: x@example.org\r\n\r\nbody\r\n", True),
        (b"Subject: a\r\n\tfolded\rX: y\r\n\r\n", True),
        (b"Subject: no blank line, CR last\r", True),
        (b"Subject: a\r\r\n\r\nbody\r\n", True),
        (b"Subject: fine\r\nTo: b@example.org\r\n\r\nbody\rwith a lone CR\r\n", False),
        (b"Subject: LF only\nTo: b@example.org\n\nbody\r\n", False),
        (b"\r\nbody starts at once\rx\r\n", False),
        (b"", False),
    ],
)
@pytest.mark.parametrize("held", [bytes, file_text], ids=["bytes", "file"])
def test_bare_cr_is_found_in_the_header_section_only(message: bytes, expected: bool, held) -> None:
    text = held(message) if message or held is bytes else message
    assert header_has_bare_cr(text) is expected
