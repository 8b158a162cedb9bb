"""A Docker engine for the container tests: the one already running, or a private ``dockerd`` started here.

``with DockerEngine() as engine: engine.docker("ps")`` runs Debian's Docker client (package ``docker.io``,
installed by ``tests/peers/install-container-packages.sh``) against:

* the engine named by ``DOCKER_HOST``, or the one on ``/var/run/docker.sock``, when it answers; or
* a private ``dockerd`` (the same package) this class starts and, on leaving the block, stops by its own
  PID and removes with its whole folder (images, containers and volumes included).

The private daemon touches nothing of the host's network set-up: ``--bridge=none --iptables=false
--ip-forward=false --ip-masq=false`` (no ``docker0`` bridge, no iptables rules, ``ip_forward`` left as it
is), so its containers run with ``--network host`` (or ``none``), and the tests talk to them on
127.0.0.1 only. User-defined bridge networks still work without iptables (tests/container/test_compose.py
uses one for docker-compose): the containers on one bridge reach each other and the host's address on it
directly (nothing is forwarded or NATed), published ports go through docker-proxy (the userland proxy) on
the host address given (127.0.0.1 in the tests), and the bridge interface (``br-<id>``) goes with the
network. This needs a host whose firewall lets bridged traffic through (``br_netfilter`` with the
``FORWARD`` chain's policy ACCEPT here).

Its data root, exec root (containerd's state), pid file and API socket live in one
temporary folder under ``/tmp`` (short, because unix socket paths are limited to 107 bytes); its
containerd puts shim sockets in ``/run/containerd/s/`` (fixed there), removed when empty and made by it.

What was found on the machine this was written on (Debian bookworm in a VM, kernel 6.18, root): dockerd
20.10.24 starts its own containerd 1.6 and runc 1.1; storage driver ``overlay2`` on the ext4 root (so no
``vfs`` fallback is needed); cgroups v1 (``cgroupfs`` driver; "no blkio weight" warnings only); iptables
1.8.9 (nf_tables) works, but the private daemon leaves it alone. ``/usr/local/bin/docker`` there is a
newer client alone (API 1.50), so the client used is always Debian's ``/usr/bin/docker``, which matches
Debian's daemon.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.processes import FolderDaemon, terminate

DOCKER = Path("/usr/bin/docker")  # Debian's client (docker.io), not whatever else is first on PATH
DOCKER_COMPOSE = Path("/usr/bin/docker-compose")  # Debian's docker-compose 1.29 (Compose v1)
DOCKERD = Path("/usr/sbin/dockerd")
DEFAULT_SOCKET = Path("/var/run/docker.sock")
SHIM_SOCKETS = (Path("/run/containerd/s"), Path("/run/containerd"))  # containerd 1.6 fixes this place
START_TIMEOUT = 60.0  # seconds for a private dockerd to answer on its socket
STOP_TIMEOUT = 60.0  # seconds for it to stop its containerd and exit after SIGTERM
INSTALL_HINT = "install it with tests/peers/install-container-packages.sh (make test-container does)"


class DockerError(AssertionError):
    """A ``docker`` command that failed: the command, its exit status and the end of its output."""


class DockerEngine(FolderDaemon):
    """A Docker engine to run the tests' images on; see the module docstring.

    Attributes:
        host: the ``-H`` address of the engine (``unix:///...``); set by :meth:`start`.
        started_here: True when :meth:`start` started a private dockerd (stopped again by :meth:`stop`).
    """

    def __init__(self) -> None:
        for program in (DOCKER, DOCKERD):
            assert program.exists(), f"{program} is missing: {INSTALL_HINT}"
        self.folder = Path(tempfile.mkdtemp(prefix="gw-docker-", dir="/tmp"))
        self.log_path = self.folder / "dockerd.log"
        self.host = ""
        self.started_here = False
        self.process: subprocess.Popen[bytes] | None = None
        self.made_shim_dirs: list[Path] = []

    def start(self) -> None:
        """Use a running engine that answers, else start a private dockerd and wait until it answers.

        Raises:
            AssertionError: the private dockerd exited or did not answer within ``START_TIMEOUT`` seconds
                (the message carries the end of its log).
        """
        for candidate in (os.environ.get("DOCKER_HOST", ""), f"unix://{DEFAULT_SOCKET}"):
            if candidate and self._answers(candidate):
                self.host = candidate
                return
        assert os.geteuid() == 0, "a private dockerd needs root (no Docker engine runs here)"
        self.host = f"unix://{self.folder / 'docker.sock'}"
        self.made_shim_dirs = [path for path in SHIM_SOCKETS if not path.exists()]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(DOCKERD),
                    "--host",
                    self.host,
                    "--data-root",
                    str(self.folder / "data"),
                    "--exec-root",
                    str(self.folder / "exec"),
                    "--pidfile",
                    str(self.folder / "dockerd.pid"),
                    "--bridge=none",
                    "--iptables=false",
                    "--ip-forward=false",
                    "--ip-masq=false",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_here = True
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers(self.host):
            assert self.process.poll() is None, f"dockerd exited ({self.process.returncode}): {self.log_tail()}"
            assert time.monotonic() < deadline, f"dockerd did not answer in {START_TIMEOUT:g}s: {self.log_tail()}"
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the private dockerd (by its PID) and unmount what it left mounted; nothing for a shared engine.

        The folder itself is removed by :class:`FolderDaemon` on leaving the ``with`` block.
        """
        if not self.started_here:
            return
        terminate(self.process, timeout=STOP_TIMEOUT)
        self.process = None
        self.started_here = False
        unmount_below(self.folder)  # dockerd leaves exec-root/netns/default mounted
        for path in self.made_shim_dirs:  # its containerd's shim socket folders, if it made them (and empty)
            try:
                path.rmdir()
            except OSError:
                pass

    def _answers(self, host: str) -> bool:
        try:
            probe = subprocess.run(
                [str(DOCKER), "--host", host, "version", "--format", "{{.Server.Version}}"],
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0 and bool(probe.stdout.strip())

    def log_tail(self, characters: int = 3000) -> str:
        """The end of the private dockerd's log ("" for a shared engine)."""
        return self.log_text()[-characters:]

    def docker(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``docker --host <engine> ARGS`` with the legacy builder (``DOCKER_BUILDKIT=0``).

        Args:
            args: the docker command line after the global options, e.g. ``("inspect", name)``.
            timeout: seconds before the command is killed (``subprocess.TimeoutExpired``).
            check: raise :class:`DockerError` on a non-zero exit status.

        Returns:
            the finished command; ``stdout`` and ``stderr`` decoded as UTF-8 (undecodable bytes replaced).
        """
        environ = {**os.environ, "DOCKER_BUILDKIT": "0"}
        environ.pop("DOCKER_HOST", None)
        return _run([str(DOCKER), "--host", self.host, *args], environ, timeout, check)

    def compose(
        self, *args: str, environment: dict[str, str], timeout: float = 300.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run Debian's ``docker-compose ARGS`` (Compose v1) against this engine.

        Args:
            args: its command line, e.g. ``("-p", "name", "-f", "a.yml", "up", "-d")``.
            environment: variables for the compose file's interpolation (``${NAME:-default}``), on top of
                this process's environment without any ``COMPOSE_*`` or ``DOCKER_*`` variable of its own.
            timeout: seconds before the command is killed (``subprocess.TimeoutExpired``).
            check: raise :class:`DockerError` on a non-zero exit status.

        Returns:
            the finished command, ``stdout`` and ``stderr`` decoded as UTF-8.
        """
        assert DOCKER_COMPOSE.exists(), f"{DOCKER_COMPOSE} is missing: {INSTALL_HINT}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
        return _run(
            [str(DOCKER_COMPOSE), *args], {**inherited, **environment, "DOCKER_HOST": self.host}, timeout, check
        )


def _run(command: list[str], environ: dict[str, str], timeout: float, check: bool) -> subprocess.CompletedProcess[str]:
    """Run ``command`` without input; its output decoded; :class:`DockerError` when ``check`` and it failed."""
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=environ, check=False
    )
    finished = subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )
    if check and finished.returncode != 0:
        raise DockerError(
            f"{Path(command[0]).name} {' '.join(command[1:])[:300]} exited {finished.returncode}:\n"
            f"{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}"
        )
    return finished


def unmount_below(folder: Path) -> None:
    """Unmount (lazily, innermost first) every mount point below ``folder``, so removing it cannot reach
    into a mounted file system (overlay layers of dockerd, debootstrap's /proc and /sys of a failed run)."""
    prefix = str(folder) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [fields[1] for line in mounts if (fields := line.split()) and fields[1].startswith(prefix)]
    for mount_point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False, timeout=30)
