"""A content scanner that hangs: the message gets 451 4.7.1, every other session is served meanwhile.

The hung scanner is a real TCP peer on loopback that accepts clamd connections
and never answers (no fake policy is involved): ``[antivirus] clamd =
"tcp:127.0.0.1:PORT"``, ``timeout = "2s"``, ``[pipeline] inbound =
["antivirus"]``. Mail from the untrusted client 127.0.0.2 to a relay domain
takes the inbound pipeline; mail from the trusted 127.0.0.1 takes the outbound
one, which has no scanner. "Served meanwhile" is judged by ordering: the other
sessions must complete while the scanned session is still waiting for its reply.
"""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Iterator

import pytest

from tests.faults.helpers import TRUSTED, UNTRUSTED, HungPeer, SmtpLine, submit
from tests.harness.helpers import relay_config


@pytest.fixture
def hung_clamd() -> Iterator[HungPeer]:
    peer = HungPeer()
    yield peer
    peer.close()  # before the gateway stops: the scan threads' reads end with the connections


@pytest.fixture
def gateway(gateway_factory, sink, hung_clamd):
    extra = (
        f'\n[pipeline]\ninbound = ["antivirus"]\n\n[antivirus]\nclamd = "tcp:127.0.0.1:{hung_clamd.port}"\n'
        'timeout = "2s"\n'
    )
    gw = gateway_factory(relay_config(sink.port, extra))
    gw.start()
    yield gw
    hung_clamd.close()  # first: lingering scan threads end, and the gateway stops at once
    gw.stop()


class InboundSession(threading.Thread):
    """One inbound message from the untrusted client; ``replied`` is set when DATA is answered."""

    def __init__(self, port: int, number: int) -> None:
        super().__init__(name=f"inbound-{number}", daemon=True)
        self.port, self.number = port, number
        self.reply: tuple[int, bytes] | None = None
        self.error: BaseException | None = None
        self.sent = threading.Event()
        self.replied = threading.Event()

    def run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, source_address=(UNTRUSTED, 0), timeout=60) as client:
                client.ehlo("outsider.test")
                assert client.mail(f"someone{self.number}@internet.example")[0] == 250
                assert client.rcpt(f"user{self.number}@example.net")[0] == 250
                self.sent.set()
                self.reply = client.data(f"Subject: scan me {self.number}\r\n\r\nhello\r\n".encode())
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            self.sent.set()
            self.replied.set()


def serve_others(port: int) -> str:
    """EHLO/NOOP on a new connection and a whole outbound message (no scanner); returns its queue ID."""
    with SmtpLine(port, TRUSTED) as client:
        assert client.reply()[0].startswith("220 ")
        assert client.command("EHLO other.test").startswith("250 ")
        assert client.command("NOOP").startswith("250 2.0.0")
        assert client.command("QUIT").startswith("221 ")
    return submit(port, "alice@example.com", ["bob@elsewhere.org"], b"Subject: outbound\r\n\r\nnot scanned\r\n")


def test_hung_scanner_tempfails_while_other_sessions_are_served(gateway, sink, hung_clamd):
    inbound = InboundSession(gateway.port, 0)
    inbound.start()
    assert hung_clamd.wait_for_connections(1, timeout=15), "the gateway never connected to the scanner"
    # The scan is in progress now (the scanner holds the connection and will never answer).
    assert not inbound.replied.is_set()
    queue_id = serve_others(gateway.port)
    assert not inbound.replied.is_set(), f"the scanned message was answered {inbound.reply} before the others"

    inbound.join(30)
    assert inbound.error is None, inbound.error
    assert inbound.reply is not None
    code, text = inbound.reply
    assert code == 451 and text.startswith(b"4.7.1 "), inbound.reply
    gateway.wait_for_log(r"policy antivirus failed at data \(.*2s")
    gateway.wait_for_log(r"to=<user0@example\.net>, size=\d+, result=tempfail \(451 4\.7\.1 ")

    gateway.wait_for_log(rf"{queue_id}: removed")
    assert [m.rcpt_tos for m in sink.messages] == [["bob@elsewhere.org"]]
    assert not sink.messages_for("user0@example.net")


def test_several_hung_scans_do_not_starve_other_sessions(gateway, sink, hung_clamd):
    sessions = [InboundSession(gateway.port, number) for number in range(8)]
    for session in sessions:
        session.start()
    for session in sessions:
        assert session.sent.wait(15)
    assert hung_clamd.wait_for_connections(1, timeout=15), "the gateway never connected to the scanner"
    hung_clamd.wait_for_connections(6, timeout=5)  # as many as run at once; fewer is fine too

    queue_id = serve_others(gateway.port)
    answered = [session.reply for session in sessions if session.replied.is_set()]
    for session in sessions:
        session.join(60)
    assert all(s.reply is not None and s.reply[0] == 451 and s.reply[1].startswith(b"4.7.1") for s in sessions), [
        s.reply or s.error for s in sessions
    ]
    assert answered == [], f"the outbound message was only accepted after scans timed out: {answered}"
    gateway.wait_for_log(rf"{queue_id}: removed")
