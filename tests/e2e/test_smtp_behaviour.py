"""SMTP dialogue rules: extensions, enhanced codes, limits, timeouts, smuggling (raw sockets)."""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from gateway.reply import parse_reply_line
from tests.harness.helpers import relay_config

CONFIG_EXTRA = (
    'smtpd_recipient_limit = 3\nmessage_size_limit = 20000\nsmtpd_timeout = "2s"\n'
    'smtpd_data_timeout = "3s"\nsmtpd_client_connection_count_limit = 4\n'
)


@pytest.fixture
def gateway(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port, CONFIG_EXTRA)) as gw:
        yield gw


class RawClient:
    """A line-level SMTP client on a plain socket (to send what smtplib will not)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[str]:
        """Read one (possibly multi-line) reply; returns its lines."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {lines}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return lines

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()[-1]

    def close(self) -> None:
        self.sock.close()


def assert_enhanced(line: str) -> None:
    reply = parse_reply_line(line)
    assert reply is not None, f"no enhanced status code in {line!r}"


def test_ehlo_advertises_the_extensions(gateway):
    client = RawClient(gateway.port)
    try:
        assert client.reply()[0].startswith("220 gw.test ESMTP")
        client.send(b"EHLO client.test\r\n")
        lines = client.reply()
        keywords = {line[4:].split()[0].upper() for line in lines[1:]}
        assert {"SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"} <= keywords
        assert "250-SIZE 20000" in lines
        assert not any("AUTH" in line for line in lines)
    finally:
        client.close()


def test_every_reply_carries_an_enhanced_status_code(gateway):
    client = RawClient(gateway.port)
    try:
        client.reply()
        seen = [client.command("MAIL FROM:<a@example.com>")]  # before EHLO
        client.send(b"EHLO client.test\r\n")
        client.reply()
        for line in [
            "RCPT TO:<b@example.org>",
            "DATA",
            "MAIL FROM:<bad address>",
            "MAIL FROM:<a@example.com>",
            "MAIL FROM:<a@example.com>",
            "RCPT TO:<not an address>",
            "RCPT TO:<b@elsewhere.org>",
            "VRFY postmaster",
            "EXPN staff",
            "NOOP",
            "HELP",
            "FOOBAR",
            "RSET",
            "MAIL FROM:<x@y> SIZE=99999999",
            "MAIL FROM:<x@y> BODY=9BIT",
            "AUTH PLAIN AGFhAGI=",
            "QUIT",
        ]:
            seen.append(client.command(line))
        for line in seen:
            if not line.startswith(("214", "250 Syntax")):  # HELP text is informational
                assert_enhanced(line)
        assert seen[-1].startswith("221 2.0.0")
    finally:
        client.close()


def test_null_sender_and_bad_sender(gateway):
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("<>")[0] == 250
        client.rset()
        code, text = client.docmd("MAIL FROM:<no-domain>")
        assert code == 501 and text.startswith(b"5.1.7")


def test_recipient_limit(gateway):
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        assert [client.rcpt(f"r{i}@elsewhere.org")[0] for i in range(3)] == [250, 250, 250]
        assert client.rcpt("r4@elsewhere.org") == (452, b"4.5.3 Error: too many recipients")


def test_message_size_limit(gateway, sink):
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.test")
        code, text = client.docmd("MAIL FROM:<a@example.com> SIZE=20001")
        assert code == 552 and text.startswith(b"5.3.4")
        client.mail("a@example.com")
        client.rcpt("b@elsewhere.org")
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 400)
        assert code == 552 and text.startswith(b"5.3.4")
        assert client.noop()[0] == 250  # the session goes on
    assert sink.messages == []


def test_bare_lf_or_cr_dot_never_ends_the_message(gateway, sink):
    client = RawClient(gateway.port)
    try:
        client.reply()
        client.send(b"EHLO client.test\r\n")
        client.reply()
        assert client.command("MAIL FROM:<a@example.com>").startswith("250")
        assert client.command("RCPT TO:<victim@elsewhere.org>").startswith("250")
        assert client.command("DATA").startswith("354")
        smuggled = (
            b"Subject: first\r\n\r\nhello\n.\nMAIL FROM:<evil@example.com>\n"
            b"RCPT TO:<smuggled@elsewhere.org>\nDATA\nSubject: smuggled\n\nevil\r.\r"
            b"more\r\n.\r\n"
        )
        client.send(smuggled)
        final = client.reply()[-1]
        assert final.startswith("250 2.0.0 Ok: queued as ")
        client.command("QUIT")
    finally:
        client.close()
    (message,) = sink.wait_for_messages(1)
    time.sleep(0.5)  # give a smuggled second message time to show up, if there were one
    assert len(sink.messages) == 1
    assert message.rcpt_tos == ["victim@elsewhere.org"]
    assert b"MAIL FROM:<evil@example.com>" in message.data  # stayed inside the first message


def test_bare_cr_in_a_header_field_is_refused_and_never_relayed(gateway, sink):
    # The relay client sends a lone CR as a line end: "Subject: hi\rBcc: ..." would reach the next hop
    # as two fields, one of them never seen by the checks here. In the body it is only a line end.
    client = RawClient(gateway.port)
    try:
        client.reply()
        client.send(b"EHLO client.test\r\n")
        client.reply()
        for message in (
            b"Subject: hi\rBcc: injected@elsewhere.org\r\n\r\nbody\r\n",
            b"Subject: folded\r\n\tsecond line\rX-Injected: yes\r\n\r\nbody\r\n",
            b"Subject: last\r",
        ):  # no body at all: the CR is still in the header section
            assert client.command("MAIL FROM:<a@example.com>").startswith("250")
            assert client.command("RCPT TO:<victim@elsewhere.org>").startswith("250")
            assert client.command("DATA").startswith("354")
            client.send(message + b"\r\n.\r\n")
            final = client.reply()[-1]
            assert final == "550 5.5.2 Error: bare <CR> received in the header section", final
        gateway.wait_for_log(
            r"result=reject \(550 5\.5\.2 Error: bare <CR> received in the header section\) "
            r"reason=bare_cr",
            count=3,
        )
        # a lone CR in the body is still taken (and sent on as a line end)
        assert client.command("MAIL FROM:<a@example.com>").startswith("250")
        assert client.command("RCPT TO:<victim@elsewhere.org>").startswith("250")
        assert client.command("DATA").startswith("354")
        client.send(b"Subject: body only\r\n\r\nline one\rline two\r\n.\r\n")
        assert client.reply()[-1].startswith("250 2.0.0 Ok: queued as ")
        client.command("QUIT")
    finally:
        client.close()
    (message,) = sink.wait_for_messages(1)
    assert b"Subject: body only\r\n" in message.data and b"line one\r\nline two\r\n" in message.data
    assert b"injected" not in message.data.lower()


def test_per_client_connection_limit_gets_421(gateway):
    outsider = "127.0.0.3"  # not in mynetworks: held to smtpd_client_connection_count_limit
    clients = [RawClient(gateway.port, outsider) for _ in range(4)]
    trusted = []
    try:
        for client in clients:
            assert client.reply()[0].startswith("220")
        extra = RawClient(gateway.port, outsider)
        line = extra.reply()[0]
        assert line.startswith("421 4.7.0"), line
        extra.close()
        # mynetworks is in smtpd_client_event_limit_exceptions by default (Postfix): no per-client count
        trusted = [RawClient(gateway.port) for _ in range(6)]
        assert all(client.reply()[0].startswith("220") for client in trusted)
    finally:
        for client in clients + trusted:
            client.close()
    # The server keeps serving once it has seen the four closes: a connection that races them may
    # still be counted over the limit, so ask again for up to 5 s.
    deadline = time.monotonic() + 5
    while True:
        again = RawClient(gateway.port, outsider)
        greeting = again.reply()[0]
        if greeting.startswith("220") or time.monotonic() > deadline:
            break
        again.close()
        time.sleep(0.05)
    assert greeting.startswith("220"), greeting
    assert again.command("EHLO client.test").startswith("250")
    again.close()


def test_idle_client_is_disconnected_after_smtpd_timeout(gateway):
    client = RawClient(gateway.port)
    try:
        client.reply()
        client.sock.settimeout(10)
        started = time.monotonic()
        assert client.sock.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 9
    finally:
        client.close()


def test_client_stalling_in_data_is_cut_and_nothing_is_queued(gateway, sink):
    client = RawClient(gateway.port)
    port = client.sock.getsockname()[1]
    try:
        client.reply()
        client.send(b"EHLO client.test\r\n")
        client.reply()
        client.command("MAIL FROM:<a@example.com>")
        client.command("RCPT TO:<b@elsewhere.org>")
        assert client.command("DATA").startswith("354")
        client.send(b"Subject: stalled\r\n\r\npartial")
        client.sock.settimeout(10)
        data = b""
        while chunk := client.sock.recv(100):
            data += chunk
        assert b"250" not in data
    finally:
        client.close()
    gateway.wait_for_log(rf"disconnect from unknown\[127\.0\.0\.1\]:{port}$")
    assert gateway.cli("queue", "list").stdout.strip() == "Mail queue is empty"
    assert sink.messages == []


def test_second_connection_still_served_after_hostile_input(gateway):
    client = RawClient(gateway.port)
    try:
        client.reply()
        client.send(b"EHLO " + b"a" * 2000 + b"\r\n")
        assert client.reply()[-1].startswith("500 5.5.2")
        client.send(b"\x00\xff\xfe garbage\r\n")
        assert_enhanced(client.reply()[-1])
        assert client.command("EHLO client.test").startswith("250")
    finally:
        client.close()
