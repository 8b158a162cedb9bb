"""Hostile and broken clients: each gets a clear reply with an enhanced status code, and the server goes on.

Extends tests/e2e/test_smtp_behaviour.py (which covers an overlong EHLO,
garbage bytes, ``\\n.\\n`` / ``\\r.\\r`` in DATA, a SIZE= over the limit, the
recipient limit's 452, the per-client connection limit and a client that
stalls in DATA) without repeating it. Every test ends by checking that a new
connection still gets a 250 to EHLO and that the gateway never logged a traceback.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
from collections.abc import Iterator

import pytest

from tests.faults.helpers import (
    SmtpLine,
    assert_enhanced,
    greet,
    running_gateway,
    still_serving,
    submit,
    wait_until,
)
from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink

RECIPIENT_LIMIT = 5
SIZE_LIMIT = 50_000
HOSTILE_EXTRA = (
    f"smtpd_recipient_limit = {RECIPIENT_LIMIT}\nmessage_size_limit = {SIZE_LIMIT}\n"
    'smtpd_timeout = "10s"\nsmtpd_data_timeout = "2s"\n'
)


@pytest.fixture(scope="module")
def hsink(fault_workers: int) -> Iterator[SmtpSink]:  # one per shape: fresh messages
    with SmtpSink() as server:
        yield server


@pytest.fixture(scope="module")
def gw(hsink: SmtpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway for the module's tests (each uses its own recipients)."""
    with running_gateway(tmp_path_factory.mktemp("hostile") / "gw", relay_config(hsink.port, HOSTILE_EXTRA)) as gateway:
        yield gateway


def served(gateway: GatewayProcess) -> None:
    """The server survived: EHLO on a new connection, and no traceback in its log so far."""
    still_serving(gateway.port)  # type: ignore[attr-defined]
    assert "Traceback" not in gateway.log_text, gateway.log_text[-3000:]


def start_transaction(client: SmtpLine, recipient: str, sender: str = "hostile@example.com") -> None:
    assert client.command(f"MAIL FROM:<{sender}>").startswith("250 2.1.0")
    assert client.command(f"RCPT TO:<{recipient}>").startswith("250 2.1.5")


def send_data(client: SmtpLine, content: bytes) -> str:
    """DATA, ``content`` (CRLF line ends, ending in CRLF) and the end-of-data line; the last reply line."""
    assert client.command("DATA").startswith("354 ")
    client.send(content + b".\r\n")
    return client.reply()[-1]


def queued_id(line: str) -> str:
    assert line.startswith("250 2.0.0 Ok: queued as "), line
    return line.rsplit(" ", 1)[1]


# ---- overlong lines ----


def test_overlong_command_lines_get_500_and_keep_the_transaction(gw, hsink):
    with greet(gw.port) as client:
        start_transaction(client, "long-kept@elsewhere.org")
        for length in (600, 70_000):  # over the 512-octet command limit; over the reader's buffer limit
            line = client.command(b"RCPT TO:<" + b"a" * length + b"@elsewhere.org>")
            assert_enhanced(line, "500", "5.5.2")
        assert client.command("RCPT TO:<long-second@elsewhere.org>").startswith("250 2.1.5")
        queue_id = queued_id(send_data(client, b"Subject: after long lines\r\n\r\nbody\r\n"))
        assert client.command("QUIT").startswith("221 ")
    gw.wait_for_log(rf"{queue_id}: removed")
    (message,) = hsink.messages_for("long-kept@elsewhere.org")
    assert message.rcpt_tos == ["long-kept@elsewhere.org", "long-second@elsewhere.org"]
    served(gw)


def test_overlong_header_line_in_data_is_refused_and_998_octets_pass(gw, hsink):
    with greet(gw.port) as client:
        start_transaction(client, "header-too-long@elsewhere.org")
        line = send_data(client, b"Subject: long header\r\nX-Long: " + b"y" * 1990 + b"\r\n\r\nbody\r\n")
        assert_enhanced(line)
        assert line.startswith("5"), line  # RFC 5321 §4.5.3.1.6: at most 1000 octets with CRLF
        # The session goes on; a line of exactly 998 octets + CRLF is within the limit.
        start_transaction(client, "header-at-limit@elsewhere.org")
        assert client.command("DATA").startswith("354 ")
        limit_line = b"X-Limit: " + b"z" * (998 - len(b"X-Limit: "))
        assert len(limit_line) == 998
        body = b"Subject: at the limit\r\n" + limit_line + b"\r\n\r\nbody\r\n"
        client.send(body + b".\r\n")
        queue_id = queued_id(client.reply()[-1])
        assert client.command("QUIT").startswith("221 ")
    gw.wait_for_log(rf"{queue_id}: removed")
    (message,) = hsink.messages_for("header-at-limit@elsewhere.org")
    assert message.data.endswith(body)
    assert hsink.messages_for("header-too-long@elsewhere.org") == []
    served(gw)


# ---- NUL and 8-bit bytes ----


@pytest.mark.parametrize(
    "command",
    [b"NO\x00OP", b"\x00\x00\x00", b"\x00EHLO client.test", b"RSET\x00", b"MAIL FROM:<nul@example.com> SIZE=\x00"],
)
def test_nul_bytes_in_commands_get_a_clear_reply(gw, command):
    with greet(gw.port) as client:
        line = client.command(command)
        assert_enhanced(line)
        assert line.startswith("5"), (command, line)
        assert client.command("NOOP").startswith("250 2.0.0")
        assert client.command("QUIT").startswith("221 ")
    served(gw)


def test_nul_bytes_in_data_get_a_clear_reply_and_are_kept_intact_if_accepted(gw, hsink):
    body = b"Subject: nul\r\n\r\nbefore\x00after\r\n\x00\r\n\x00.\r\n"
    with greet(gw.port) as client:
        start_transaction(client, "nul-data@elsewhere.org")
        line = send_data(client, body)
        assert_enhanced(line)
        assert client.command("QUIT").startswith("221 ")
    if line.startswith("250"):
        gw.wait_for_log(rf"{queued_id(line)}: removed")
        (message,) = hsink.messages_for("nul-data@elsewhere.org")
        assert message.data.endswith(body)
    else:
        assert line.startswith("5"), line
        assert hsink.messages_for("nul-data@elsewhere.org") == []
    served(gw)


def test_8bit_body_without_body_8bitmime_is_relayed_byte_intact(gw, hsink):
    eight_bit = bytes(range(0x80, 0x100))
    body = (
        b"Subject: 8bit \xe9t\xe9\r\nX-Raw: \xff\xfe\xc3\x28\r\n\r\n"
        + b"\r\n".join(eight_bit[i : i + 32] for i in range(0, len(eight_bit), 32))
        + b"\r\nlatin-1: caf\xe9, invalid UTF-8: \xc3\x28 \xa0\xa1, valid: \xc3\xa9\r\n"
    )
    with greet(gw.port) as client:
        start_transaction(client, "eight-bit@elsewhere.org")  # no BODY=8BITMIME
        queue_id = queued_id(send_data(client, body))
        assert client.command("QUIT").startswith("221 ")
    gw.wait_for_log(rf"{queue_id}: removed")
    (message,) = hsink.messages_for("eight-bit@elsewhere.org")
    assert message.data.endswith(body)
    served(gw)


def test_control_characters_in_envelope_addresses_never_block_delivery(gateway_factory, sink):
    """Refusing such an address at MAIL/RCPT is fine; accepting it and then holding the message is not."""
    config = relay_config(sink.port, 'maximal_queue_lifetime = "3s"\n')
    with gateway_factory(config) as gateway:
        expected = []
        with greet(gateway.port) as client:
            for number, (sender, recipient) in enumerate(
                [
                    (b"nul\x00sender@example.com", b"fine0@elsewhere.org"),
                    (b"del\x7fsender@example.com", b"fine1@elsewhere.org"),
                    (b"alice@example.com", b"nul\x00rcpt@elsewhere.org"),
                    (b"alice@example.com", b"del\x7frcpt@elsewhere.org"),
                ]
            ):
                line = client.command(b"MAIL FROM:<" + sender + b">")
                assert_enhanced(line)
                if not line.startswith("250"):
                    assert line.startswith("501 5.1.7"), line
                    continue
                line = client.command(b"RCPT TO:<" + recipient + b">")
                assert_enhanced(line)
                assert line.startswith(("250 ", "501 5.1.3")), line
                assert client.command(f"RCPT TO:<good{number}@elsewhere.org>").startswith("250 ")
                assert client.command("DATA").startswith("354 ")
                client.send(b"Subject: control characters\r\n\r\nbody\r\n.\r\n")
                assert client.reply()[-1].startswith("250 2.0.0")
                expected.append(f"good{number}@elsewhere.org")
            client.command("QUIT")
        # Whatever was accepted: its good recipients get it, the rest bounces or expires; nothing stays queued.
        wait_until(
            lambda: all(sink.messages_for(r) for r in expected),
            timeout=10,
            what=f"the good recipients {expected} at the relayhost",
        )
        wait_until(
            lambda: "Mail queue is empty" in gateway.cli("queue", "list").stdout,
            timeout=15,
            what="an empty queue after maximal_queue_lifetime",
        )
        assert "Traceback" not in gateway.log_text


# ---- limits ----


def test_message_over_the_size_limit_pipelined_gets_552_and_the_session_goes_on(gw, hsink):
    big = b"Subject: too big\r\n\r\n" + (b"x" * 78 + b"\r\n") * (SIZE_LIMIT // 80 + 100)
    with greet(gw.port) as client:
        # No SIZE= declared: the limit is only found while reading DATA. MAIL, RCPT and DATA in one write
        # (RFC 2920: DATA ends the group), then the message and a pipelined command in another.
        client.send(b"MAIL FROM:<big@example.com>\r\nRCPT TO:<too-big@elsewhere.org>\r\nDATA\r\n")
        assert client.reply()[-1].startswith("250 2.1.0")
        assert client.reply()[-1].startswith("250 2.1.5")
        assert client.reply()[-1].startswith("354 ")
        client.send(big + b".\r\nNOOP\r\n")
        assert_enhanced(client.reply()[-1], "552", "5.3.4")
        assert client.reply()[-1].startswith("250 2.0.0")  # the NOOP sent with the message
        start_transaction(client, "small-after-big@elsewhere.org")
        queue_id = queued_id(send_data(client, b"Subject: small\r\n\r\nsmall\r\n"))
        assert client.command("QUIT").startswith("221 ")
    gw.wait_for_log(rf"{queue_id}: removed")
    assert hsink.messages_for("too-big@elsewhere.org") == []
    assert len(hsink.messages_for("small-after-big@elsewhere.org")) == 1
    served(gw)


def test_too_many_recipients_the_accepted_ones_get_the_message(gw, hsink):
    recipients = [f"many{i}@elsewhere.org" for i in range(RECIPIENT_LIMIT + 3)]
    with greet(gw.port) as client:
        assert client.command("MAIL FROM:<many@example.com>").startswith("250 ")
        replies = [client.command(f"RCPT TO:<{r}>") for r in recipients]
        assert all(line.startswith("250 2.1.5") for line in replies[:RECIPIENT_LIMIT]), replies
        for line in replies[RECIPIENT_LIMIT:]:
            assert_enhanced(line, "452", "4.5.3")
        queue_id = queued_id(send_data(client, b"Subject: many\r\n\r\nbody\r\n"))
        assert client.command("QUIT").startswith("221 ")
    gw.wait_for_log(rf"{queue_id}: removed")
    (message,) = hsink.messages_for(recipients[0])
    assert message.rcpt_tos == recipients[:RECIPIENT_LIMIT]
    assert all(hsink.messages_for(r) == [] for r in recipients[RECIPIENT_LIMIT:])
    served(gw)


# ---- commands out of order ----


def test_commands_out_of_order_get_503_5_5_1(gw, hsink):
    with SmtpLine(gw.port) as client:
        assert client.reply()[0].startswith("220 ")
        assert_enhanced(client.command("MAIL FROM:<early@example.com>"), "503", "5.5.1")  # before EHLO
        assert client.command("EHLO client.test").startswith("250 ")
        assert_enhanced(client.command("DATA"), "503", "5.5.1")  # before MAIL
        assert_enhanced(client.command("RCPT TO:<order@elsewhere.org>"), "503", "5.5.1")  # before MAIL
        assert client.command("MAIL FROM:<order@example.com>").startswith("250 ")
        assert_enhanced(client.command("MAIL FROM:<again@example.com>"), "503", "5.5.1")  # MAIL twice
        assert_enhanced(client.command("DATA"), "503", "5.5.1")  # no RCPT yet
        assert client.command("RCPT TO:<order@elsewhere.org>").startswith("250 ")
        assert client.command("RSET").startswith("250 ")
        assert_enhanced(client.command("DATA"), "503", "5.5.1")  # RSET forgot it
        assert_enhanced(client.command("RCPT TO:<order@elsewhere.org>"), "503", "5.5.1")
        # A proper transaction still works, and only it is delivered (as the first MAIL said nothing).
        start_transaction(client, "order-ok@elsewhere.org", sender="order2@example.com")
        queue_id = queued_id(send_data(client, b"Subject: in order\r\n\r\nbody\r\n"))
        assert client.command("QUIT").startswith("221 ")
    gw.wait_for_log(rf"{queue_id}: removed")
    (message,) = hsink.messages_for("order-ok@elsewhere.org")
    assert message.mail_from == "order2@example.com" and message.rcpt_tos == ["order-ok@elsewhere.org"]
    assert hsink.messages_for("order@elsewhere.org") == []
    served(gw)


# ---- STARTTLS ----


@pytest.mark.parametrize(
    "injected",
    [
        b"MAIL FROM:<injected@example.com>\r\n",
        b"EHLO evil.test\r\nMAIL FROM:<injected@example.com>\r\nRCPT TO:<injected@elsewhere.org>\r\n",
    ],
    ids=["MAIL", "EHLO-MAIL-RCPT"],
)
def test_commands_pipelined_after_starttls_close_the_session_unanswered(gw, hsink, injected):
    """CVE-2011-0411's injection: STARTTLS must end its group (RFC 3207 §4, RFC 2920), so the session is refused
    ``554 5.5.0`` (smtpd_forbid_unauth_pipelining) and closed; nothing injected is answered or runs."""
    with greet(gw.port) as client:
        client.send(b"STARTTLS\r\n" + injected)  # one write: the injection rides with STARTTLS
        assert_enhanced(client.reply()[-1], "554", "5.5.0")
        assert client.closed_by_peer(5)
        assert client.buffer == b""  # nothing after the 554: no 220, no reply to anything injected
    gw.wait_for_log(r"554 5\.5\.0 Error: SMTP protocol synchronization detail=STARTTLS")
    # a client that waits for the 220 gets TLS and relays
    with greet(gw.port) as client:
        assert client.command("STARTTLS").startswith("220 ")
        client.starttls(gw.ca_file)
        assert client.command("EHLO client.test").startswith("250 ")
        start_transaction(client, "after-tls@elsewhere.org", sender="real@example.com")
        queue_id = queued_id(send_data(client, b"Subject: over TLS\r\n\r\nbody\r\n"))
        assert client.command("QUIT").startswith("221 ")
    line = gw.wait_for_log(rf"{queue_id}: client=")[0]
    assert "from=<real@example.com>" in line and "tls=TLS" in line
    gw.wait_for_log(rf"{queue_id}: removed")
    message = [m for m in hsink.messages_for("after-tls@elsewhere.org") if m.data.endswith(b"over TLS\r\n\r\nbody\r\n")]
    assert message and all(m.mail_from == "real@example.com" for m in message)
    assert hsink.messages_for("injected@elsewhere.org") == []
    assert not any(m.mail_from == "injected@example.com" for m in hsink.messages)
    served(gw)


def test_second_starttls_inside_tls_gets_554_5_5_1(gw):
    with greet(gw.port) as client:
        assert client.command("STARTTLS").startswith("220 ")
        client.starttls(gw.ca_file)
        ehlo = client.command("EHLO client.test")
        assert ehlo.startswith("250 ")
        assert_enhanced(client.command("STARTTLS"), "554", "5.5.1")
        assert client.command("NOOP").startswith("250 2.0.0")
        assert client.command("MAIL FROM:<tls@example.com>").startswith("250 ")
        assert client.command("QUIT").startswith("221 ")
    served(gw)


# ---- end-of-data smuggling ----


@pytest.mark.parametrize(
    "fake_end",
    [b"\r\n.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n", b"\r\n.\r\r\n"],
    ids=["CRLF.LF", "LF.CRLF", "CRLF.CR", "CR.CRLF", "CRLF.CRCRLF"],
)
def test_bare_line_endings_never_end_data_and_nothing_is_smuggled(gw, hsink, fake_end):
    tag = fake_end.hex()
    smuggled = (
        b"MAIL FROM:<evil-"
        + tag.encode()
        + b"@example.com>\r\nRCPT TO:<smuggled-"
        + tag.encode()
        + b"@elsewhere.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
    )
    body = b"Subject: first\r\n\r\nhello" + fake_end + smuggled
    with greet(gw.port) as client:
        start_transaction(client, f"victim-{tag}@elsewhere.org")
        queue_id = queued_id(send_data(client, body))
        # Nothing else was answered: the next reply is the NOOP's.
        assert client.command("NOOP").startswith("250 2.0.0")
        assert client.command("QUIT").startswith("221 ")
    gw.wait_for_log(rf"{queue_id}: removed")
    (message,) = hsink.messages_for(f"victim-{tag}@elsewhere.org")
    assert message.rcpt_tos == [f"victim-{tag}@elsewhere.org"]
    assert b"RCPT TO:<smuggled-" + tag.encode() + b"@elsewhere.org>" in message.data  # stayed inside
    assert hsink.messages_for(f"smuggled-{tag}@elsewhere.org") == []
    assert not any(m.mail_from == f"evil-{tag}@example.com" for m in hsink.messages)
    served(gw)


# ---- slow clients ----


@pytest.mark.parametrize("trickle", [False, True], ids=["stall", "trickle"])
def test_client_slow_in_data_is_cut_at_the_data_timeout(gw, hsink, trickle):
    """smtpd_data_timeout (2s) bounds the whole DATA phase, well before smtpd_timeout (10s) would fire.

    The stalling variant extends test_smtp_behaviour.py's (where the command timeout is shorter than the
    data timeout, so either could have closed it); the trickling one sends a line every 0.25 s.
    """
    recipient = f"{'trickle' if trickle else 'stall'}@elsewhere.org"
    with greet(gw.port, helo="slow.test") as client:
        port = client.sock.getsockname()[1]
        start_transaction(client, recipient)
        assert client.command("DATA").startswith("354 ")
        client.send(b"Subject: slow\r\n\r\npartial")
        closed = False
        for number in range(32):  # 8 s at most: past smtpd_data_timeout, before smtpd_timeout
            if trickle:
                try:
                    client.send(b" line %d\r\n" % number)
                except OSError:
                    closed = True
                    break
            if client.closed_by_peer(0.25):
                closed = True
                break
        assert closed, "the server did not cut the slow client at smtpd_data_timeout"
        assert b"250" not in client.buffer
    gw.wait_for_log(rf"disconnect from unknown\[\S+\]:{port}$")
    wait_until(lambda: "Mail queue is empty" in gw.cli("queue", "list").stdout, timeout=10, what="an empty queue")
    assert hsink.messages_for(recipient) == []
    assert f"to=<{recipient}>, size=" not in gw.log_text
    served(gw)


# ---- connection flood ----


def test_connection_flood_over_the_total_limit_gets_421_and_the_server_goes_on(gateway_factory, sink):
    config = relay_config(sink.port, "smtpd_connection_limit = 100\nsmtpd_client_connection_count_limit = 1000\n")
    with gateway_factory(config) as gateway:
        sockets: list[socket.socket] = []
        greetings: list[bytes] = []
        try:
            for _ in range(500):
                sockets.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=20))
            for sock in sockets:  # every connection is open at once now
                data = b""
                while b"\r\n" not in data:
                    chunk = sock.recv(512)
                    if not chunk:
                        break
                    data += chunk
                greetings.append(data.split(b"\r\n", 1)[0])
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        accepted = [g for g in greetings if g.startswith(b"220 ")]
        refused = [g for g in greetings if g.startswith(b"421 ")]
        assert len(accepted) == 100, (len(accepted), len(refused), set(greetings) - set(accepted) - set(refused))
        assert len(refused) == 400
        for line in set(refused):
            assert_enhanced(line.decode(), "421", "4.7.0")
        gateway.wait_for_log(r"connection limit reached, refusing 127\.0\.0\.1")
        # Once they are gone the server keeps serving: a normal message is accepted.
        wait_until(lambda: _ehlo_ok(gateway.port), timeout=15, interval=0.2, what="a 220 after the flood")
        queue_id = submit(
            gateway.port,
            "after@example.com",
            ["after-flood@elsewhere.org"],
            b"Subject: after the flood\r\n\r\nbody\r\n",
        )
        gateway.wait_for_log(rf"{queue_id}: removed")
        assert "Traceback" not in gateway.log_text
    assert [m.rcpt_tos for m in sink.messages] == [["after-flood@elsewhere.org"]]


def _ehlo_ok(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            return client.ehlo("client.test")[0] == 250
    except (OSError, smtplib.SMTPException):
        return False
