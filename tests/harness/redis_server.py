"""redis-server (Debian) on loopback for tests: no persistence, its own folder, stopped by its own PID."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.ports import free_port
from tests.harness.processes import FolderDaemon, terminate

REDIS_SERVER = Path("/usr/bin/redis-server")


class RedisServer(FolderDaemon):
    """``with RedisServer() as redis: redis.url`` (``redis://127.0.0.1:PORT/0``); :meth:`stop` and
    :meth:`start` again to take it away and bring it back on the same port."""

    def __init__(self) -> None:
        assert REDIS_SERVER.exists(), (
            "redis-server is installed by make test-peers (tests/peers/install-debian-packages.sh)"
        )
        self.folder = Path(tempfile.mkdtemp(prefix="redis-"))
        self.log_path = self.folder / "redis.log"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.log_path),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            assert self.process.poll() is None, f"redis-server exited: {self.log_text()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"redis-server did not answer: {self.log_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.process)
        self.process = None
