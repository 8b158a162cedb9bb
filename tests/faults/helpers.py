"""Shared pieces of the fault tests: a byte-level SMTP client, reply checks, peers that misbehave.

Everything here talks to 127.0.0.0/8 only, and every wait is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import client_tls
from tests.harness.ports import free_port

TRUSTED = "127.0.0.1"  # in mynetworks = 127.0.0.1/32 (relay_config)
UNTRUSTED = "127.0.0.2"  # loopback too, but outside mynetworks: the inbound pipeline applies

# "250-", "250 ": a three-digit code, 2xx..5xx, then a separator (RFC 5321 §4.2).
_CODE_RE = re.compile(rb"^([2-5][0-9][0-9])([ -]|$)")
# RFC 3463 enhanced status code right after the basic code.
_ENHANCED_RE = re.compile(r"^([2-5])[0-9][0-9][ -]([245])\.([0-9]{1,3})\.([0-9]{1,3})( |$)")


class SmtpLine:
    """A line-level SMTP client on a plain socket, to send what smtplib will not.

    ``reply()`` returns the lines of one (possibly multi-line) reply as ``str``
    (UTF-8, undecodable bytes escaped); ``starttls()`` wraps the socket in place.
    """

    def __init__(self, port: int, source: str = TRUSTED, timeout: float = 15.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[str]:
        """Read one reply; raises ConnectionError when the server closed the connection first."""
        lines: list[str] = []
        for _ in range(1000):  # a reply never has that many lines
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed; reply so far {lines}")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(raw.decode("utf-8", "backslashreplace"))
            if raw[3:4] != b"-":
                return lines
        raise AssertionError(f"endless reply: {lines[:5]}...")

    def command(self, line: str | bytes) -> str:
        """Send one command line (CRLF added) and return the last line of its reply."""
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply()[-1]

    def starttls(self, ca_file: Path) -> None:
        """Complete a TLS handshake after a ``220`` to STARTTLS (checks the gateway's certificate)."""
        assert self.buffer == b"", f"unread plaintext before TLS: {self.buffer!r}"
        self.sock = client_tls(ca_file).wrap_socket(self.sock, server_hostname="127.0.0.1")

    def closed_by_peer(self, timeout: float) -> bool:
        """True when the server closes the connection within ``timeout`` s (any data read is kept)."""
        self.sock.settimeout(timeout)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def greet(port: int, source: str = TRUSTED, helo: str = "client.test") -> SmtpLine:
    """Connect, read the banner, EHLO; returns the client."""
    client = SmtpLine(port, source)
    banner = client.reply()
    assert banner[0].startswith("220 "), banner
    assert client.command(f"EHLO {helo}").startswith("250 "), "EHLO refused"
    return client


def assert_enhanced(line: str, code: str | None = None, status: str | None = None) -> None:
    """``line`` carries an RFC 3463 code whose class matches the reply code (and the given values)."""
    match = _ENHANCED_RE.match(line)
    assert match is not None, f"no enhanced status code in {line!r}"
    assert match.group(1) == match.group(2), f"class of the enhanced code does not match in {line!r}"
    if code is not None:
        assert line.startswith((code + " ", code + "-")), f"expected {code}: {line!r}"
    if status is not None:
        assert line[4:].startswith(status + " ") or line[4:] == status, f"expected {status}: {line!r}"


def reply_code(line: bytes | str) -> int | None:
    """The basic reply code of a line, or None when it has none."""
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
    match = _CODE_RE.match(raw)
    return int(match.group(1)) if match else None


def still_serving(port: int) -> None:
    """A fresh connection gets the banner and a 250 to EHLO (the server survived)."""
    with SmtpLine(port) as client:
        banner = client.reply()
        assert banner[0].startswith("220 "), banner
        assert client.command("EHLO after.test").startswith("250 ")
        assert client.command("QUIT").startswith("221 ")


def submit(
    port: int, sender: str, recipients: list[str], body: bytes, *, source: str = TRUSTED, timeout: float = 15.0
) -> str:
    """Send one message with smtplib; returns the queue ID from ``250 2.0.0 Ok: queued as <id>``."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=timeout) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            assert code == 250, (recipient, code, text)
        code, text = client.data(body)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), (code, text)
    return text.rsplit(b" ", 1)[1].decode()


def data_reply(port: int, sender: str, recipient: str, body: bytes) -> tuple[int, bytes]:
    """MAIL/RCPT/DATA with smtplib; returns the reply to the end of data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        assert client.rcpt(recipient)[0] == 250
        return client.data(body)


@contextlib.contextmanager
def running_gateway(state_dir: Path, config_text: str, *, port: int | None = None) -> Iterator[GatewayProcess]:
    """A gateway with a STARTTLS listener on 127.0.0.1 (``.port``), for module-scoped fixtures.

    Prints its log when the block raised, and always stops it.
    """
    port = port or free_port()
    text = config_text + f'\n[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\ntls = "starttls"\n'
    gateway = GatewayProcess(state_dir, text)
    gateway.port = port  # type: ignore[attr-defined]
    gateway.start()
    try:
        yield gateway
    except BaseException:
        print(f"---- log of gateway {state_dir} ----\n{gateway.log_text}")
        raise
    finally:
        gateway.stop()


def fill_filesystem(path: Path) -> int:
    """Write ``path`` until the file system is full (ENOSPC); returns the bytes written.

    Bounded: at most the file system's size is written, in shrinking chunks.
    """
    stats = os.statvfs(path.parent)
    budget = stats.f_blocks * stats.f_frsize + (1 << 20)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            block = b"\0" * chunk
            while written < budget:
                try:
                    written += os.write(fd, block)
                except OSError as error:
                    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    break
    finally:
        os.close(fd)
    return written


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``path``; returns None, or why it could not be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return f"mounting a tmpfs needs root (running as uid {os.geteuid()})"
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"mount could not run: {error}"
    if result.returncode != 0:
        return f"mount -t tmpfs refused (rc={result.returncode}): {result.stderr.strip()}"
    return None


def unmount(path: Path) -> None:
    """Unmount ``path`` (lazily when it is still busy)."""
    result = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, timeout=30, check=False)


class HungPeer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung clamd).

    Connections are held open until :meth:`close`, which closes them all (the
    peers' reads then end). ``connections`` counts accepted ones.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hung-peer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.held.append(connection)
                self._cond.notify_all()

    @property
    def connections(self) -> int:
        with self._cond:
            return len(self.held)

    def wait_for_connections(self, count: int, timeout: float) -> bool:
        """True once ``count`` connections were accepted, False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.held) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        """Stop accepting and close every held connection (idempotent)."""
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        with self._cond:
            for connection in self.held:
                with contextlib.suppress(OSError):
                    connection.close()


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
