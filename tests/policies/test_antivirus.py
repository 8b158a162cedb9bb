"""policies.antivirus against a real clamd on loopback (tests/harness/clamd.py).

The session's ``clamd`` fixture serves the scans; tests that stop a daemon use
a private :class:`ClamdDaemon` so the session one stays up. A scripted
stand-in (:class:`ScriptedClamd`) covers answers a healthy clamd never gives.
"""

from __future__ import annotations

import asyncio
import email.policy
import ipaddress
import re
import socket
import struct
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from gateway import config as gateway_config
from gateway.envelope import ClientInfo, Envelope
from gateway.errors import ConfigError, ScannerError
from gateway.pipeline.policy import PolicyContext
from gateway.verdict import Action, HeaderEdit, Verdict
from policies.antivirus import SCANNED_HEADER, SKIPPED_HEADER, Antivirus
from tests.harness.clamd import ClamdDaemon
from tests.harness.samples import CORPUS, CORPUS_FILES

EICAR_NAME = "Eicar-Test-Signature"  # clamd adds ".UNOFFICIAL" for our unsigned test DB
CLEAN = Verdict(Action.CONTINUE, headers=HeaderEdit(prepend=(SCANNED_HEADER,)))
TRANSPORTS = ("tcp", "unix")


def make_policy(**table: Any) -> Antivirus:
    """An Antivirus policy built the way the gateway builds it, from ``[antivirus]``."""
    return Antivirus(gateway_config.build({"antivirus": table}))


def address(daemon: ClamdDaemon, transport: str) -> str:
    return daemon.tcp_address if transport == "tcp" else daemon.unix_address


def context() -> PolicyContext:
    client = ClientInfo(ipaddress.ip_address("192.0.2.10"), 40000, "smtp", helo="client.example.com")
    return PolicyContext(client, Envelope("alice@example.com", ["bob@example.net"]), queue_id="TESTQUEUEID")


def scan(policy: Antivirus, message: bytes) -> Verdict:
    return asyncio.run(policy.on_data(context(), message))


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, the way a message arrives over SMTP."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def eicar_mail() -> bytes:
    """A MIME message with EICAR as a base64 attachment (CRLF line endings)."""
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "bob@example.net"
    message["Subject"] = "the file you asked for"
    message["Date"] = "Mon, 01 Jan 2024 00:00:00 +0000"
    message["Message-ID"] = "<eicar@example.com>"
    message.set_content("Please see the attached file.\n")
    message.add_attachment(
        ClamdDaemon.eicar_bytes(), maintype="application", subtype="octet-stream", filename="invoice.com"
    )
    raw = message.as_bytes(policy=email.policy.SMTP)
    # clamd must find it in the decoded attachment, not in plain text.
    assert b"Content-Transfer-Encoding: base64\r\n" in raw and ClamdDaemon.eicar_bytes() not in raw
    return raw


def clean_mail(body_size: int = 0) -> bytes:
    """A plain text message with about ``body_size`` bytes of extra body."""
    lines = b"".join(b"line %06d of a long and harmless body\r\n" % i for i in range(body_size // 40 + 1))
    return (
        b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: lunch\r\n"
        b"Message-ID: <clean@example.com>\r\n\r\nSee you at noon.\r\n" + lines
    )


def assert_virus_rejected(verdict: Verdict) -> None:
    assert verdict.action is Action.REJECT
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == (554, "5.7.1")
    assert verdict.reply.text.startswith(f"Virus found: {EICAR_NAME}")
    assert verdict.reason == "virus" and verdict.detail.startswith(EICAR_NAME)


# ---- detection over both transports ----


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_eicar_attachment_is_rejected(clamd: ClamdDaemon, transport: str) -> None:
    verdict = scan(make_policy(clamd=address(clamd, transport)), eicar_mail())
    assert_virus_rejected(verdict)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_eicar_attachment_is_held_with_action_hold(clamd: ClamdDaemon, transport: str) -> None:
    verdict = scan(make_policy(clamd=address(clamd, transport), action="hold"), eicar_mail())
    assert verdict.action is Action.HOLD and verdict.reply is None
    assert verdict.reason == "virus" and verdict.detail.startswith(EICAR_NAME)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clean_message_gets_scanned_header(clamd: ClamdDaemon, transport: str) -> None:
    assert scan(make_policy(clamd=address(clamd, transport)), clean_mail()) == CLEAN


@pytest.mark.parametrize("size", [0, 4096, 8192])
def test_lengths_on_pyclamd_chunk_boundaries(clamd: ClamdDaemon, size: int) -> None:
    # pyclamd sends a second end-of-stream marker for bytes of these lengths; we must not.
    policy = make_policy(clamd=clamd.unix_address)
    assert scan(policy, b"a" * size) == CLEAN
    eicar = ClamdDaemon.eicar_bytes()
    if size:
        assert_virus_rejected(scan(policy, eicar + b"a" * (size - len(eicar))))


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda path: str(path.relative_to(CORPUS)))
def test_corpus_message_scans_clean(clamd: ClamdDaemon, path: Path) -> None:
    assert scan(make_policy(clamd=clamd.tcp_address), to_crlf(path.read_bytes())) == CLEAN


def test_corpus_is_there() -> None:
    assert len(CORPUS_FILES) > 100, f"corpus missing or incomplete under {CORPUS}"


# ---- off the event loop ----


def test_concurrent_scans_each_get_their_own_verdict(clamd: ClamdDaemon) -> None:
    tcp_policy, unix_policy = make_policy(clamd=clamd.tcp_address), make_policy(clamd=clamd.unix_address)
    messages = [eicar_mail() if i % 2 else clean_mail(i * 1000) for i in range(8)]

    async def main() -> list[Verdict]:
        return await asyncio.gather(
            *(
                (tcp_policy if i % 4 < 2 else unix_policy).on_data(context(), message)
                for i, message in enumerate(messages)
            )
        )

    verdicts = asyncio.run(main())
    for i, verdict in enumerate(verdicts):
        if i % 2:
            assert_virus_rejected(verdict)
        else:
            assert verdict == CLEAN


def test_event_loop_keeps_running_during_a_scan(clamd: ClamdDaemon) -> None:
    policy = make_policy(clamd=clamd.tcp_address)
    real_scan = policy._scan
    ticked = threading.Event()
    seen: dict[str, Any] = {}

    def observed_scan(message: bytes) -> str | None:
        seen["thread"] = threading.get_ident()
        # Only the ticker on the loop can set this: if the scan blocked the loop, it never would.
        seen["ticked_during_scan"] = ticked.wait(30)
        return real_scan(message)

    policy._scan = observed_scan  # type: ignore[method-assign]

    async def main() -> tuple[Verdict, int]:
        ticks = 0
        scanning = True

        async def ticker() -> None:
            nonlocal ticks
            while scanning:
                ticks += 1
                ticked.set()
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        try:
            verdict = await policy.on_data(context(), eicar_mail())
        finally:
            scanning = False
            await task
        return verdict, ticks

    verdict, ticks = asyncio.run(main())
    assert_virus_rejected(verdict)
    assert seen["ticked_during_scan"] and ticks >= 1
    assert seen["thread"] != threading.get_ident()  # asyncio.run's loop runs in this thread


# ---- scanner failures ----


@pytest.fixture(scope="module")
def private_clamd() -> Iterator[ClamdDaemon]:
    """A second clamd for stop/start tests, with a 1 MiB StreamMaxLength."""
    with ClamdDaemon(stream_max_length="1M") as daemon:
        yield daemon


def test_stopped_daemon_raises_scanner_error_then_recovers(private_clamd: ClamdDaemon) -> None:
    policies = [make_policy(clamd=address(private_clamd, t), timeout="10s") for t in TRANSPORTS]
    for policy in policies:
        assert_virus_rejected(scan(policy, eicar_mail()))
    private_clamd.stop()
    try:
        assert private_clamd.pid is None
        for policy in policies:
            with pytest.raises(ScannerError, match=r"^clamd (tcp|unix):"):
                scan(policy, eicar_mail())
    finally:
        private_clamd.start()
    for policy in policies:
        assert_virus_rejected(scan(policy, eicar_mail()))
        assert scan(policy, clean_mail()) == CLEAN


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stream_over_clamd_limit_raises_scanner_error(private_clamd: ClamdDaemon, transport: str) -> None:
    # clamd answers "INSTREAM size limit exceeded. ERROR" (or drops the connection mid-send).
    policy = make_policy(clamd=address(private_clamd, transport), timeout="10s")
    with pytest.raises(ScannerError):
        scan(policy, clean_mail(2 * 1024 * 1024))
    assert scan(policy, clean_mail(100_000)) == CLEAN


def test_nothing_listening_on_tcp_raises_scanner_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(ScannerError, match=f"tcp:127.0.0.1:{port}"):
            scan(make_policy(clamd=f"tcp:127.0.0.1:{port}", timeout="5s"), clean_mail())


def test_missing_unix_socket_raises_scanner_error(tmp_path: Path) -> None:
    with pytest.raises(ScannerError, match="unix:"):
        scan(make_policy(clamd=f"unix:{tmp_path / 'no-clamd.sock'}", timeout="5s"), clean_mail())


class ScriptedClamd:
    """A loopback stand-in for clamd: reads one INSTREAM, then sends ``answer`` and closes.

    ``answer=None`` never answers (until :meth:`close`), to test the timeout.
    """

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # lets the accept loop see ``closing``
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as stream:
            connection.settimeout(10)
            try:
                if stream.readline() != b"nINSTREAM\n":
                    return  # pyclamd's probe connection sends nothing
                while size := struct.unpack("!L", stream.read(4))[0]:
                    stream.read(size)
                if self.answer is None:
                    self.closing.wait(30)
                else:
                    connection.sendall(self.answer)
            except (OSError, struct.error):
                pass

    def close(self) -> None:
        self.closing.set()
        self.thread.join(5)
        self.listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed without an answer (pyclamd: "clean")
        b"stream: Can't allocate memory ERROR\n",
        b"stream: something new\n",  # pyclamd: "clean"
        b"PONG\n",  # pyclamd: IndexError
        b"stream: OK\nstream: Other.Sig FOUND\n",
    ],
)
def test_unexpected_answer_raises_scanner_error(answer: bytes) -> None:
    server = ScriptedClamd(answer)
    try:
        with pytest.raises(ScannerError, match=f"^clamd tcp:127.0.0.1:{server.port}: "):
            scan(make_policy(clamd=f"tcp:127.0.0.1:{server.port}", timeout="5s"), eicar_mail())
    finally:
        server.close()


def test_scripted_answers_are_read_like_clamds() -> None:
    # The stand-in itself is sound: the two valid answers give the normal verdicts.
    for answer, expected in ((b"stream: OK\n", CLEAN), (b"stream: Some.Sig-1 FOUND\n", "Some.Sig-1")):
        server = ScriptedClamd(answer)
        try:
            verdict = scan(make_policy(clamd=f"tcp:127.0.0.1:{server.port}"), clean_mail())
        finally:
            server.close()
        if expected is CLEAN:
            assert verdict == CLEAN
        else:
            assert verdict.reply is not None and verdict.reply.text == f"Virus found: {expected}"


def test_silent_clamd_raises_scanner_error_at_timeout() -> None:
    server = ScriptedClamd(None)
    policy = make_policy(clamd=f"tcp:127.0.0.1:{server.port}", timeout="0.5s")

    async def main() -> None:
        try:
            with pytest.raises(ScannerError, match=r"no answer within 0\.5s"):
                await policy.on_data(context(), clean_mail())
        finally:
            server.close()  # ends the worker thread, which asyncio.run waits for

    asyncio.run(main())


# ---- max_size ----


def test_message_over_max_size_is_not_scanned(clamd: ClamdDaemon) -> None:
    message = eicar_mail()
    skipped = Verdict(Action.CONTINUE, headers=HeaderEdit(prepend=(SKIPPED_HEADER,)))
    assert scan(make_policy(clamd=clamd.tcp_address, max_size=len(message) - 1), message) == skipped
    assert_virus_rejected(scan(make_policy(clamd=clamd.tcp_address, max_size=len(message)), message))


def test_max_size_takes_size_units(clamd: ClamdDaemon) -> None:
    policy = make_policy(clamd=clamd.tcp_address, max_size="1k")
    assert policy.max_size == 1024
    assert scan(policy, clean_mail(2000)).headers.prepend == (SKIPPED_HEADER,)


# ---- configuration ----


def test_defaults() -> None:
    policy = Antivirus(gateway_config.build({}))
    assert str(policy.address) == "unix:/run/clamav/clamd.ctl"
    assert (policy.action, policy.timeout, policy.on_error, policy.max_size) == (
        "reject",
        60.0,
        "tempfail",
        25 * 1024 * 1024,
    )


def test_settings_are_read() -> None:
    policy = make_policy(clamd="tcp:clamav.internal:3310", action="hold", timeout="2m", on_error="pass", max_size="10M")
    assert (policy.address.host, policy.address.port) == ("clamav.internal", 3310)
    assert (policy.action, policy.timeout, policy.on_error, policy.max_size) == (
        "hold",
        120.0,
        "pass",
        10 * 1024 * 1024,
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"clamd": "127.0.0.1:3310"}, "antivirus.clamd"),
        ({"clamd": "tcp:127.0.0.1"}, "antivirus.clamd"),
        ({"clamd": "tcp:127.0.0.1:99999"}, "antivirus.clamd"),
        ({"clamd": "tcp:[::1]:3310"}, "antivirus.clamd"),
        ({"clamd": "unix:relative/clamd.sock"}, "antivirus.clamd"),
        ({"clamd": 3310}, "antivirus.clamd"),
        ({"action": "discard"}, "antivirus.action"),
        ({"timeout": "soon"}, "antivirus.timeout"),
        ({"timeout": 0}, "antivirus.timeout"),
        ({"on_error": "ignore"}, "antivirus.on_error"),
        ({"max_size": "huge"}, "antivirus.max_size"),
        ({"max_size": 0}, "antivirus.max_size"),
        ({"scanner": "clamd"}, "antivirus.scanner"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_policy(**table)
    assert caught.value.key == key
    assert key in str(caught.value)
