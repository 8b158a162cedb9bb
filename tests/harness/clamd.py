"""clamd on loopback for tests (see shared/test-peers.md §1).

:class:`ClamdDaemon` runs the real Debian ``/usr/sbin/clamd`` offline: freshclam
cannot run without internet, so the signature DB is two one-line custom files
that only know EICAR (an ``.ndb`` body signature, which also matches inside a
decoded base64 MIME part, and an ``.hdb`` MD5 of the exact file). Custom,
unsigned DBs report names with a ``.UNOFFICIAL`` suffix
(``Eicar-Test-Signature.UNOFFICIAL``): match on the prefix.

The daemon listens on a free TCP port on 127.0.0.1 and on a Unix socket in its
own ``/tmp/clamd.*`` folder, and is started and stopped by its own PID only
(never pkill/killall: other programs on a shared machine run clamd too).

The session-scoped fixture :func:`clamd` starts one daemon per test session.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from tests.harness.ports import free_port
from tests.harness.processes import terminate

CLAMD_BINARY = Path("/usr/sbin/clamd")
SETPRIV = Path("/usr/bin/setpriv")  # util-linux

# EICAR in two halves so that no file of the repository carries the whole string
# (scanners on developer machines and in CI would quarantine it).
_EICAR_HEAD = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
_EICAR_TAIL = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


class ClamdDaemon:
    """One clamd process with an EICAR-only signature DB, on TCP 127.0.0.1 and a Unix socket.

    The folder, config and port are made once in the constructor, so
    :meth:`start` after :meth:`stop` brings the daemon back on the same
    addresses. Use as a context manager or call :meth:`close` to stop it and
    remove the folder.

    Args:
        stream_max_length: clamd's ``StreamMaxLength`` (clamd size syntax such
            as ``"50M"``); larger INSTREAM data gets
            ``INSTREAM size limit exceeded. ERROR``.
        ready_timeout: seconds :meth:`start` waits for ``zPING`` → ``PONG``.
        stop_timeout: seconds :meth:`stop` waits after SIGTERM before SIGKILL.
        binary: the clamd executable.

    Attributes:
        folder: the ``/tmp/clamd.*`` folder holding config, DB, socket and logs.
        host, port: the TCP listener (``host`` is always ``"127.0.0.1"``).
        socket_path: the Unix socket.
    """

    def __init__(
        self,
        *,
        stream_max_length: str = "50M",
        ready_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        binary: Path = CLAMD_BINARY,
    ) -> None:
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.folder = Path(tempfile.mkdtemp(prefix="clamd.", dir="/tmp"))
        # mkdtemp makes 0700; clamd may drop privileges (a User line, AppArmor) and must reach it.
        self.folder.chmod(0o755)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.socket_path = self.folder / "clamd.sock"
        self.config_path = self.folder / "clamd.conf"
        self.log_path = self.folder / "clamd.log"
        self.output_path = self.folder / "stdout.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_database()
        self._write_config(stream_max_length)
        # Callers that only stop() (or crash) still leave no daemon or folder behind.
        atexit.register(self.close)

    @classmethod
    def eicar_bytes(cls) -> bytes:
        """The 68-byte EICAR anti-virus test file."""
        eicar = _EICAR_HEAD + _EICAR_TAIL
        assert len(eicar) == 68
        return eicar

    @property
    def tcp_address(self) -> str:
        """``"tcp:127.0.0.1:PORT"``, the ``[antivirus] clamd`` form."""
        return f"tcp:{self.host}:{self.port}"

    @property
    def unix_address(self) -> str:
        """``"unix:/tmp/clamd.XXXX/clamd.sock"``, the ``[antivirus] clamd`` form."""
        return f"unix:{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """PID of the running clamd, None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while our clamd process is alive."""
        return self._process is not None and self._process.poll() is None

    def _write_database(self) -> None:
        database = self.folder / "db"
        database.mkdir()
        eicar = self.eicar_bytes()
        (database / "test.ndb").write_text(f"Eicar-Test-Signature:0:*:{eicar.hex()}\n")
        (database / "test.hdb").write_text(f"{hashlib.md5(eicar).hexdigest()}:{len(eicar)}:Eicar-Test-File\n")

    def _write_config(self, stream_max_length: str) -> None:
        # No "User" line: as root clamd stays root, as a normal user it runs as that user.
        self.config_path.write_text(
            "Foreground yes\n"
            f"DatabaseDirectory {self.folder / 'db'}\n"
            f"LocalSocket {self.socket_path}\n"
            f"TCPSocket {self.port}\n"
            f"TCPAddr {self.host}\n"
            f"TemporaryDirectory {self.folder}\n"
            f"LogFile {self.log_path}\n"
            f"StreamMaxLength {stream_max_length}\n"
            "MaxThreads 4\n"
        )

    def start(self) -> None:
        """Start clamd and wait until it answers ``zPING`` on both sockets.

        Raises:
            FileNotFoundError: when the clamd binary is missing.
            RuntimeError: when clamd exits or is not ready within ``ready_timeout``
                seconds (the message holds the end of its logs).
        """
        if self.running:
            return
        if not self.binary.exists():
            raise FileNotFoundError(f"{self.binary} is missing (Debian package clamav-daemon)")
        # A SIGKILLed clamd leaves its socket file; clamd 1.4 replaces a stale one, but don't rely on it.
        self.socket_path.unlink(missing_ok=True)
        command = [str(self.binary), f"--config-file={self.config_path}"]
        # setpriv execs clamd (same PID) with a parent-death signal, so a test run killed hard
        # (SIGKILL, os._exit) leaves no clamd behind. The signal fires when the forking *thread*
        # ends, hence only from the main thread.
        if SETPRIV.exists() and threading.current_thread() is threading.main_thread():
            command = [str(SETPRIV), "--pdeathsig", "TERM", *command]
        with open(self.output_path, "ab") as output:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"clamd exited at start:\n{self.log_tail()}")
            if self._ping_tcp() and self._ping_unix():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"clamd not ready within {self.ready_timeout:g}s:\n{self.log_tail()}")

    def _ping_tcp(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                return _ping(sock)
        except OSError:
            return False

    def _ping_unix(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket_path))
                return _ping(sock)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM our clamd, wait up to ``stop_timeout`` seconds, then SIGKILL it."""
        process, self._process = self._process, None
        terminate(process, self.stop_timeout)

    def close(self) -> None:
        """Stop clamd and remove its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of clamd's log file and of its stdout/stderr."""
        parts = []
        for path in (self.log_path, self.output_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _ping(sock: socket.socket) -> bool:
    """Send ``zPING`` on a connected socket; True when clamd answers ``PONG``."""
    sock.sendall(b"zPING\0")
    answer = b""
    while not answer.endswith(b"\0"):
        data = sock.recv(64)
        if not data:
            break
        answer += data
    return answer.rstrip(b"\0") == b"PONG"


@pytest.fixture(scope="session")
def clamd() -> Iterator[ClamdDaemon]:
    """One clamd for the whole test session (EICAR-only DB; TCP and Unix socket)."""
    if not CLAMD_BINARY.exists() or not os.access(CLAMD_BINARY, os.X_OK):
        # Not a skip: CI must test the antivirus; `make test` installs the Debian packages.
        pytest.fail(
            f"{CLAMD_BINARY} not found: run `make test`, which installs the Debian test "
            "peers (clamav-daemon, clamdscan; see tests/peers/install-debian-packages.sh)",
            pytrace=False,
        )
    daemon = ClamdDaemon()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()
