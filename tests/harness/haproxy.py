"""haproxy (Debian) on loopback for tests and the bench: TCP mode, PROXY protocol v1 and v2 towards the gateway.

:class:`HaproxyServer` writes a configuration with one frontend per backend
given (``send-proxy`` for v1, ``send-proxy-v2`` for v2), runs ``haproxy -db``
in the foreground (stopped by its own PID) and waits until every frontend port
accepts connections. With ``health_check`` (e.g. ``"smtpchk EHLO lb.test"``)
every server is checked (haproxy sends the PROXY header on its checks too: a
v2 ``LOCAL`` one, or v1 ``UNKNOWN``); :meth:`HaproxyServer.server_states` reads
what haproxy thinks of each server from its runtime API (``show stat`` on a
Unix socket in the folder). A connection that cannot reach its server is
retried on another one (``option redispatch 1``), as a balancer in front of
replicas is set up.
"""

from __future__ import annotations

import csv
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
        frontends: name -> (backend servers as (host, port), or (host, port, check port) to run the health
            check on another port, the server option: ``send-proxy`` or ``send-proxy-v2``); each gets a
            frontend on a free port of 127.0.0.1, balancing round-robin. The servers of backend ``name`` are
            called ``s0``, ``s1``, ... in the order given.
        health_check: haproxy's check option without ``option`` (``"smtpchk EHLO lb.test"``, or
            ``"httpchk GET /readyz"`` with a check port: the gateway's metrics listener); None: no checks.
        check_interval: seconds between two checks of a server (haproxy ``inter``); a server is marked down
            after two failed checks in a row and up again after one good one.
        max_connections: haproxy's ``maxconn`` (connections at once, whole process).
    """

    def __init__(
        self,
        frontends: dict[str, tuple[list[tuple[str, int] | tuple[str, int, int]], str]],
        *,
        health_check: str | None = None,
        check_interval: float = 2.0,
        max_connections: int = 200,
    ) -> None:
        assert HAPROXY.exists(), "haproxy is installed by make test-peers (tests/peers/install-debian-packages.sh)"
        self.folder = Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.log_path = self.folder / "haproxy.log"
        self.admin_socket = self.folder / "admin.sock"
        self.ports = {name: free_port() for name in frontends}
        check = f" check inter {round(check_interval * 1000)} fall 2 rise 1" if health_check else ""
        lines = [
            "global",
            f"    maxconn {max_connections}",
            f"    stats socket {self.admin_socket} mode 600 level admin",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout check 5s",
            "    retries 2",
            "    option redispatch 1",
        ]
        for name, (servers, option) in frontends.items():
            lines += [
                f"frontend {name}",
                f"    bind 127.0.0.1:{self.ports[name]}",
                f"    default_backend {name}_servers",
                f"backend {name}_servers",
                "    balance roundrobin",
            ]
            lines += [f"    option {health_check}"] if health_check else []
            for index, (host, port, *check_port) in enumerate(servers):
                on_port = f" port {check_port[0]}" if check and check_port else ""
                lines.append(f"    server s{index} {host}:{port} {option}{check}{on_port}")
        self.config = self.folder / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
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

    def command(self, line: str) -> str:
        """One runtime API command (``show stat``, ``show servers state``...) over the admin socket; its answer.

        Raises:
            OSError: haproxy is not running or did not answer within 10 seconds.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):  # haproxy closes the socket after one command's answer
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self, frontend: str) -> dict[str, str]:
        """Server name (``s0``...) -> haproxy's status of it in ``frontend``'s backend: ``UP``, ``DOWN``,
        ``UP 1/2`` (going down), ``DOWN 1/1`` (going up), ``no check`` (checks off), ``MAINT``."""
        rows = csv.DictReader(self.command("show stat").lstrip("# ").splitlines())
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == f"{frontend}_servers" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_for_states(self, frontend: str, wanted: dict[str, str], timeout: float = 30.0) -> dict[str, str]:
        """Poll :meth:`server_states` until each server named in ``wanted`` has that status; the states.

        Raises:
            AssertionError: not within ``timeout`` seconds (with the last states and haproxy's log).
        """
        deadline = time.monotonic() + timeout
        while True:
            states = self.server_states(frontend)
            if all(states.get(name) == status for name, status in wanted.items()):
                return states
            assert time.monotonic() < deadline, f"haproxy states {states}, not {wanted}: {self.log_text()[-2000:]}"
            time.sleep(0.05)
