"""Every message of tests/corpus relays with its body byte-for-byte intact.

Messages are sent with smtplib, which converts line endings to CRLF (8 corpus
files are LF-only); what reaches the sink must be exactly that, below our one
added ``Received:`` field.
"""

from __future__ import annotations

import re
import smtplib

import pytest

from gateway.message import mbox_separator
from tests.harness.helpers import relay_config
from tests.harness.samples import CORPUS as CORPUS_DIR
from tests.harness.smtp_sink import SmtpSink

CORPUS = sorted(p for p in CORPUS_DIR.rglob("*") if p.is_file() and p.name != "LICENSE")
RECEIVED = re.compile(rb"Received: from [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def test_corpus_is_present():
    assert len(CORPUS) >= 100, f"expected the corpus at {CORPUS_DIR}"


@pytest.fixture(scope="module", params=["in-memory", "file-held"])
def corpus_gateway(tmp_path_factory, request):
    from tests.harness.gateway_process import GatewayProcess
    from tests.harness.ports import free_port

    with SmtpSink() as sink:
        port = free_port()
        # file-held: every message stays in the DATA reader's file, is copied into the spool by the
        # kernel and read back by the relay client in chunks (the way of a message over 1 MB)
        spill = "smtpd_data_spill_size = 1\n" if request.param == "file-held" else ""
        config = relay_config(sink.port, 'message_size_limit = "50M"\n' + spill)
        config += f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\ntls = "none"\n'
        with GatewayProcess(tmp_path_factory.mktemp("corpus-gw"), config) as gateway:
            gateway.port = port
            yield gateway, sink


@pytest.mark.parametrize("path", CORPUS, ids=[str(p.relative_to(CORPUS_DIR)) for p in CORPUS])
def test_corpus_message_relays_byte_intact(corpus_gateway, path):
    gateway, sink = corpus_gateway
    raw = path.read_bytes()
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    recipient = f"c{CORPUS.index(path)}@elsewhere.org"
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        # smtplib sends bytes as they are: give it the CRLF form an SMTP client must send
        assert client.sendmail("corpus@example.com", [recipient], expected) == {}
    (message,) = sink.wait_for_recipient(recipient)
    # Our Received goes on top, below a leading mbox "From " separator line when the message has one.
    separator = mbox_separator(expected)
    assert message.data.startswith(separator)
    trace = RECEIVED.match(message.data, len(separator))
    assert trace, message.data[:200]
    assert separator + message.data[trace.end() :] == expected
