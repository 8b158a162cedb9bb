"""Small helpers the tests share: a gateway config relaying to a sink, a client TLS context, an HTTP GET."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.harness.gateway_process import GatewayProcess
from tests.harness.smtp_sink import SmtpSink


def client_tls(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client context that verifies the gateway's certificate against its local CA."""
    context = ssl.create_default_context(cafile=str(ca_file))  # checks the name: SAN has IP 127.0.0.1
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def relay_config(sink_port: int, extra: str = "", **overrides: str) -> str:
    """Top-level config keys for a gateway relaying to a sink, with short timers for tests.

    ``overrides`` replace a default key's TOML value text, e.g. ``minimal_backoff_time='"1h"'``.
    """
    keys = {
        "relayhost": f'["[127.0.0.1]:{sink_port}"]',
        "mynetworks": '["127.0.0.1/32"]',
        "relay_domains": '["example.net"]',
        "minimal_backoff_time": '"1s"',
        "maximal_backoff_time": '"2s"',
        "queue_run_delay": '"1s"',
        "myhostname": '"gw.test"',
    }
    keys.update(overrides)
    return "".join(f"{key} = {value}\n" for key, value in keys.items()) + extra


def http_get(url: str) -> tuple[int, str]:
    """(HTTP status, body text) of a GET; error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metrics_after_one_delivery(gateway: GatewayProcess, sink: SmtpSink, subject: str) -> tuple[int, str]:
    """Relay one message to ``b@elsewhere.org`` through ``gateway``, wait until it is removed, scrape /metrics."""
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@elsewhere.org"], f"Subject: {subject}\r\n\r\nx\r\n".encode())
    sink.wait_for_messages(1)
    gateway.wait_for_log(r"[0-9A-F]{19}: removed")
    return http_get(gateway.metrics_url + "/metrics")


def raw_session(port: int, lines: list[bytes], source: str = "127.0.0.1") -> list[bytes]:
    """Send each of ``lines`` (CRLF added) on one plain connection from ``source``; the greeting and each reply.

    For what smtplib will not send (control bytes, odd syntax). A multi-line reply comes back as its last line.
    """
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=10) as sock:
        reader = sock.makefile("rb")
        replies = [reader.readline()]
        for line in lines:
            sock.sendall(line + b"\r\n")
            while (reply := reader.readline())[3:4] == b"-":
                pass
            replies.append(reply)
        return replies


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` within ``seconds`` without sending anything first."""
    sock.settimeout(seconds)
    try:
        return sock.recv(100) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


class DataSession:
    """A raw SMTP session from ``source`` up to the 354 to DATA; the test writes the message as it likes.

    ``TCP_NODELAY`` is set, so each :meth:`send` piece leaves as its own write (a DATA reader sees
    the stream cut where the test cut it, given a pause).
    """

    def __init__(self, port: int, recipient: str, source: str, timeout: float = 120) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        for command in (
            None,
            b"EHLO client.test",
            b"MAIL FROM:<a@example.org>",
            f"RCPT TO:<{recipient}>".encode(),
            b"DATA",
        ):
            if command is not None:
                self.sock.sendall(command + b"\r\n")
            while (reply := self.reader.readline())[3:4] == b"-":
                pass
            assert reply[:1] in (b"2", b"3"), reply

    def finish(self, rest: bytes = b"", pieces: list[bytes] = (), pause: float = 0.0) -> bytes:  # type: ignore[assignment]
        """Send ``pieces`` (one write each, ``pause`` seconds apart), then ``rest`` and the end-of-data line;
        the reply, then QUIT."""
        for piece in pieces:
            self.sock.sendall(piece)
            if pause:
                time.sleep(pause)
        self.sock.sendall(rest + b".\r\n")
        reply = self.reader.readline()
        self.sock.sendall(b"QUIT\r\n")
        self.reader.close()
        self.sock.close()
        return reply


def swaks_login_and_send(
    port: int,
    *,
    mechanism: str,
    user: str,
    password: str,
    sender: str,
    recipient: str,
    source: str = "127.0.0.1",
    tls_option: str = "--tls",
    subject: str = "swaks",
) -> subprocess.CompletedProcess[str]:
    """Send one message with swaks after ``AUTH mechanism`` (``tls_option``: ``--tls`` STARTTLS, ``--tlsc`` 465)."""
    swaks = shutil.which("swaks")
    assert swaks, "swaks is installed by make test-peers (tests/peers/install-debian-packages.sh)"
    return subprocess.run(
        [
            swaks,
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            tls_option,
            "--local-interface",
            source,
            "--auth",
            mechanism,
            "--auth-user",
            user,
            "--auth-password",
            password,
            "--from",
            sender,
            "--to",
            recipient,
            "--header",
            f"Subject: {subject}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
