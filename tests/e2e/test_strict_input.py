"""Malformed and out-of-turn input is refused with a clear reply, and the server keeps serving.

A real gateway on loopback, raw sockets for what no well-behaved client sends: an
unterminated path, an invalid address literal, NUL bytes in commands and in the
message, a NOOP flood, talking before the greeting, pipelining without PIPELINING,
and 8-bit text without ``BODY=8BITMIME`` under ``strict_8bitmime``. After each
refusal (or on a new connection, where the refusal closes the session) the
gateway still answers EHLO, and a well-behaved message still goes through.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.harness.helpers import raw_session, relay_config

TRUSTED, OUTSIDER = "127.0.0.1", "127.0.0.3"  # relay_config's mynetworks is 127.0.0.1/32


class Conversation:
    """One plain connection: the greeting, then :meth:`say` a line (or :meth:`send` raw bytes) and read replies."""

    def __init__(self, port: int, source: str = TRUSTED, read_greeting: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=15)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply() if read_greeting else b""

    def reply(self) -> bytes:
        """The last line of the next reply (b"" when the server closed the connection)."""
        while (line := self.reader.readline())[3:4] == b"-":
            pass
        return line

    def say(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed(self) -> bool:
        return self.reader.readline() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def gateway(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port, 'smtpd_pregreet_wait = "0.3s"\n')) as started:
        yield started


def still_serving(gateway, source: str = TRUSTED) -> None:
    """A new connection is greeted and EHLO answered 250."""
    replies = raw_session(gateway.port, [b"EHLO client.test", b"QUIT"], source=source)
    assert replies[0].startswith(b"220 ") and replies[1].startswith(b"250 ") and replies[2].startswith(b"221 ")


def test_an_unterminated_path_and_an_invalid_address_literal_are_syntax_errors(gateway):
    talk = Conversation(gateway.port)
    assert talk.say(b"EHLO client.test").startswith(b"250 ")
    assert talk.say(b"MAIL FROM:<unterminated") == b"501 5.1.7 Bad sender address syntax\r\n"
    assert talk.say(b"MAIL FROM:<a@example.org>").startswith(b"250 ")
    assert talk.say(b"RCPT TO:<x@[999.999.999.999]>") == b"501 5.1.3 Bad recipient address syntax\r\n"
    assert talk.say(b"RCPT TO:<x@[IPv6:2001:db8::zz]>") == b"501 5.1.3 Bad recipient address syntax\r\n"
    assert talk.say(b"RCPT TO:<unterminated@example.net") == b"501 5.1.3 Bad recipient address syntax\r\n"
    assert talk.say(b"RCPT TO:<x@[192.0.2.1]>").startswith(b"250 ")  # a valid literal (a trusted client relays)
    assert talk.say(b"EHLO again.test").startswith(b"250 ")
    talk.close()
    gateway.wait_for_log(
        r"NOQUEUE: reject: RCPT from .*501 5\.1\.3 Bad recipient address syntax; "
        r"from=<a@example\.org> to=<x@\[999\.999\.999\.999\]>"
    )


def test_a_nul_in_a_command_is_refused_and_the_session_goes_on(gateway):
    talk = Conversation(gateway.port)
    assert talk.say(b"EHLO client\x00.test") == b"501 5.5.2 Error: NUL character in command\r\n"
    assert talk.say(b"NOOP \x00") == b"501 5.5.2 Error: NUL character in command\r\n"
    assert talk.say(b"EHLO client.test").startswith(b"250 ")
    assert talk.say(b"MAIL FROM:<a\x00b@example.org>")[:4] == b"501 "
    assert talk.say(b"QUIT").startswith(b"221 ")
    talk.close()
    gateway.wait_for_log(
        r"NOQUEUE: reject: SESSION from .*501 5\.5\.2 Error: NUL character in command "
        r"detail=EHLO client\^@\.test"
    )  # the log shows control characters in caret notation


def test_a_noop_flood_is_closed_after_the_junk_command_limit(gateway, sink):
    talk = Conversation(gateway.port)
    assert talk.say(b"EHLO client.test").startswith(b"250 ")
    replies = [talk.say(b"NOOP") for _ in range(101)]  # 5000 would all be answered 250 before the limit
    assert all(reply.startswith(b"250 ") for reply in replies[:100])
    assert replies[100] == b"421 4.7.0 Error: too many junk commands, closing transmission channel\r\n"
    assert talk.closed()
    talk.close()
    still_serving(gateway)
    # the count starts again after each accepted message, as Postfix's does
    talk = Conversation(gateway.port)
    assert talk.say(b"EHLO client.test").startswith(b"250 ")
    for round_number in range(2):
        assert all(talk.say(b"RSET").startswith(b"250 ") for _ in range(80))
        for line in (b"MAIL FROM:<a@example.org>", b"RCPT TO:<r@elsewhere.test>"):
            assert talk.say(line).startswith(b"250 ")
        assert talk.say(b"DATA").startswith(b"354 ")
        assert talk.say(f"Subject: {round_number}\r\n\r\nbody\r\n.".encode()).startswith(b"250 ")
    assert talk.say(b"QUIT").startswith(b"221 ")
    talk.close()
    assert len(sink.wait_for_messages(2)) == 2


def test_an_untrusted_early_talker_is_refused_and_closed(gateway):
    early = Conversation(gateway.port, source=OUTSIDER, read_greeting=False)
    early.send(b"EHLO bot.test\r\n")  # before the greeting
    assert early.reply() == b"554 5.5.1 Error: SMTP protocol synchronization: talked before the greeting\r\n"
    assert early.closed()
    early.close()
    gateway.wait_for_log(
        r"NOQUEUE: reject: CONNECT from unknown\[127\.0\.0\.3\]:\d+: 554 5\.5\.1 Error: SMTP "
        r"protocol synchronization: talked before the greeting detail=b'EHLO bot\.test"
    )
    # one that waits for the greeting is served; a trusted client is never held back or tested
    still_serving(gateway, source=OUTSIDER)
    trusted = Conversation(gateway.port, source=TRUSTED, read_greeting=False)
    trusted.send(b"EHLO inside.test\r\n")
    assert trusted.reply().startswith(b"220 ") and trusted.reply().startswith(b"250 ")
    trusted.close()


def test_pipelining_without_pipelining_is_refused_and_closed(gateway, sink):
    helo = Conversation(gateway.port, source=OUTSIDER)
    helo.send(b"HELO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
    assert helo.reply() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert helo.closed()
    helo.close()
    ehlo = Conversation(gateway.port, source=OUTSIDER)
    ehlo.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")  # EHLO must end its group (RFC 2920)
    assert ehlo.reply() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert ehlo.closed()
    ehlo.close()
    gateway.wait_for_log(r"reject: SESSION from unknown\[127\.0\.0\.3\]:\d+: 554 5\.5\.0 .*detail=HELO client\.test")
    # after EHLO, MAIL, RCPT and DATA in one group is RFC 2920 pipelining, and is taken
    good = Conversation(gateway.port, source=OUTSIDER)
    assert good.say(b"EHLO client.test").startswith(b"250 ")
    good.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
    assert [good.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    assert good.say(b"Subject: pipelined\r\n\r\nbody\r\n.").startswith(b"250 ")
    good.close()
    (message,) = sink.wait_for_messages(1)
    assert message.rcpt_tos == ["r@example.net"]


def transaction(talk: Conversation, body: bytes, mail_parameters: bytes = b"") -> bytes:
    for line in (b"MAIL FROM:<a@example.org>" + mail_parameters, b"RCPT TO:<r@elsewhere.test>"):
        assert talk.say(line).startswith(b"250 "), line
    assert talk.say(b"DATA").startswith(b"354 ")
    return talk.say(body + b"\r\n.")


def test_nul_in_the_message_is_refused_with_5_6_0(gateway, sink):
    talk = Conversation(gateway.port)
    assert talk.say(b"EHLO client.test").startswith(b"250 ")
    refused = transaction(talk, b"Subject: nul\r\n\r\nbefore\x00after")
    assert refused == b"550 5.6.0 Error: NUL character in message content\r\n"
    assert talk.say(b"EHLO client.test").startswith(b"250 ")
    assert transaction(talk, "Subject: 8-bit\r\n\r\ncaf\u00e9".encode()).startswith(b"250 ")  # default: taken
    talk.close()
    (message,) = sink.wait_for_messages(1)
    assert "café".encode() in message.data
    gateway.wait_for_log(r"result=reject \(550 5\.6\.0 Error: NUL character in message content\) reason=nul_in_message")


def test_strict_8bitmime_refuses_undeclared_8bit_text(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port, "strict_8bitmime = true\n")) as gateway:
        talk = Conversation(gateway.port)
        assert talk.say(b"EHLO client.test").startswith(b"250 ")
        eight_bit = "Subject: 8-bit\r\n\r\ncaf\u00e9".encode()
        assert transaction(talk, eight_bit) == b"550 5.6.0 Error: 8-bit message content without BODY=8BITMIME\r\n"
        assert transaction(talk, eight_bit, b" BODY=8BITMIME").startswith(b"250 ")
        assert transaction(talk, b"Subject: 7-bit\r\n\r\nplain").startswith(b"250 ")
        assert talk.say(b"EHLO client.test").startswith(b"250 ")
        talk.close()
        assert len(sink.wait_for_messages(2)) == 2


def test_the_pregreet_wait_holds_the_greeting_back_from_untrusted_clients_only(gateway):
    started = time.monotonic()
    outsider = Conversation(gateway.port, source=OUTSIDER)
    held = time.monotonic() - started
    assert outsider.greeting.startswith(b"220 ")
    outsider.close()
    assert held >= 0.3  # smtpd_pregreet_wait = 0.3s: a lower bound, never an upper one
