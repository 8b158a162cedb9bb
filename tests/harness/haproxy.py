"""haproxy (Debian) on loopback for tests: TCP mode, PROXY protocol v1 and v2 towards the gateway.

:class:`HaproxyServer` writes a configuration with one frontend per backend
given (``send-proxy`` for v1, ``send-proxy-v2`` for v2), runs ``haproxy -db``
in the foreground (stopped by its own PID) and waits until every frontend port
accepts connections.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.ports import free_port
from tests.harness.processes import FolderDaemon, terminate

HAPROXY = Path("/usr/sbin/haproxy")


class HaproxyServer(FolderDaemon):
    """``with HaproxyServer({"v1": ([("127.0.0.1", 2525)], "send-proxy")}) as lb: lb.ports["v1"]``.

    Args:
        frontends: name -> (backend servers as (host, port), the server option: ``send-proxy`` or
            ``send-proxy-v2``); each gets a frontend on a free port of 127.0.0.1, balancing round-robin.
    """

    def __init__(self, frontends: dict[str, tuple[list[tuple[str, int]], str]]) -> None:
        assert HAPROXY.exists(), "haproxy is installed by make test-peers (tests/peers/install-debian-packages.sh)"
        self.folder = Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.log_path = self.folder / "haproxy.log"
        self.ports = {name: free_port() for name in frontends}
        lines = ["global", "    maxconn 200", "defaults", "    mode tcp", "    timeout connect 5s",
                 "    timeout client 60s", "    timeout server 60s"]
        for name, (servers, option) in frontends.items():
            lines += [f"frontend {name}", f"    bind 127.0.0.1:{self.ports[name]}", f"    default_backend {name}_servers",
                      f"backend {name}_servers", "    balance roundrobin"]
            lines += [f"    server s{index} {host}:{port} {option}" for index, (host, port) in enumerate(servers)]
        self.config = self.folder / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(HAPROXY), "-db", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        for port in self.ports.values():
            while True:
                assert self.process.poll() is None, f"haproxy exited: {self.log_text()}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"haproxy did not listen on {port}: {self.log_text()}"
                    time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.process)
