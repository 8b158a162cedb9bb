"""Large messages go through the streaming DATA reader's file: relayed whole, in bounded memory, nothing smuggled.

A message over ``smtpd_data_spill_size`` stays in the unnamed file the DATA
reader writes (gateway.message.FileText): the spool copies it with
copy_file_range and the relay worker reads it back from the spool in chunks.
Peak memory is the kernel's high-water mark of the real gateway process
(``VmHWM``, reset through ``clear_refs`` before the message), file-backed pages
included.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiosmtplib.protocol import normalize_message_line_endings

from tests.harness.helpers import DataSession, relay_config

UNTRUSTED = "127.0.0.3"  # outside mynetworks: may only send to relay_domains (example.net)
RECEIVED = re.compile(rb"Received: from [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def _memory(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(value) * 1024 for key, value in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB$", text, re.M)}


def _stuffed(text: bytes) -> bytes:
    """``text`` (CRLF lines) dot-stuffed as an SMTP client sends it."""
    text = text.replace(b"\r\n.", b"\r\n..")
    return b"." + text if text.startswith(b".") else text


def _relayed_body(data: bytes) -> bytes:
    """What the sink got, below our Received: field."""
    trace = RECEIVED.match(data)
    assert trace, data[:300]
    return data[trace.end() :]


def test_a_50_mb_message_relays_byte_intact_in_a_few_mb_of_memory(gateway_factory, sink):
    gw = gateway_factory(relay_config(sink.port, 'message_size_limit = "60M"\nworkers = 1\n'))
    with gw:
        line = b"x" * 76 + b"\r\n"
        message = b"From: a@example.org\r\nSubject: fifty\r\n\r\n" + line * (50_000_000 // len(line))
        pid = gw.process.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the high-water mark starts again from now
        before = _memory(pid)["VmRSS"]
        session = DataSession(gw.port, "fifty@example.net", UNTRUSTED)
        reply = session.finish(pieces=[message[i : i + (1 << 20)] for i in range(0, len(message), 1 << 20)])
        assert reply.startswith(b"250 2.0.0 "), reply
        gw.wait_for_log(r"to=<fifty@example\.net>, .*status=sent", timeout=120)
        (delivered,) = sink.messages_for("fifty@example.net")
        assert _relayed_body(delivered.data) == message
        increase = _memory(pid)["VmHWM"] - before
        # the DATA reader's pieces, the spool's checksum reads and the relay client's chunks: a few MB
        assert increase < len(message) // 5, f"peak memory rose by {increase / 1e6:.1f} MB for a 50 MB message"


FAKE_ENDS = [b"\r\n.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n", b"\r\n.\r\r\n"]


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=["CRLF.LF", "LF.CRLF", "CRLF.CR", "CR.CRLF", "CRLF.CRCRLF"])
def test_smuggling_sequences_at_chunk_boundaries_never_end_the_message(gateway_factory, sink, fake_end):
    gw = gateway_factory(relay_config(sink.port, 'message_size_limit = "10M"\n'))
    tag = fake_end.hex()
    smuggled = (
        b"MAIL FROM:<evil-"
        + tag.encode()
        + b"@example.com>\r\nRCPT TO:<smuggled-"
        + tag.encode()
        + b"@elsewhere.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
    )
    # A fake end of data with smuggled commands behind it, and around every 64 kB multiple a
    # stretch of fake ends 2 kB long: whatever the length of the Received: field the spool file
    # starts with, the relay client's 256 kB reads and the spool's 1 MB checksum reads of that
    # file end inside one of them.
    filler = b"y" * 70 + b"\r\n"
    minefield = (fake_end + b"z") * (2048 // (len(fake_end) + 1))
    body = bytearray(b"From: a@example.org\r\nSubject: boundaries\r\n\r\n")
    while len(body) < 3_000_000:
        body += filler * (65536 // len(filler) - 14) + minefield
    text = bytes(body) + b"hello" + fake_end + smuggled
    stuffed = _stuffed(text)
    # The DATA reader gets the stream cut in the middle of the smuggling sequence (TCP_NODELAY, a pause).
    cut = stuffed.rindex(b"hello") + len(b"hello") + len(fake_end) // 2
    with gw:
        session = DataSession(gw.port, f"victim-{tag}@example.net", UNTRUSTED)
        reply = session.finish(pieces=[stuffed[:cut], stuffed[cut:]], pause=0.3)
        assert reply.startswith(b"250 2.0.0 "), reply
        queue_id = reply.split()[-1].decode()
        gw.wait_for_log(rf"{queue_id}: removed", timeout=60)
        (message,) = sink.messages_for(f"victim-{tag}@example.net")
        # Relayed with line ends made CRLF (as any SMTP client must send them): every fake end stayed text
        assert _relayed_body(message.data) == normalize_message_line_endings(text)
        assert b"RCPT TO:<smuggled-" + tag.encode() + b"@elsewhere.org>" in message.data
        assert sink.messages_for(f"smuggled-{tag}@elsewhere.org") == []
        assert not any(m.mail_from == f"evil-{tag}@example.com" for m in sink.messages)
