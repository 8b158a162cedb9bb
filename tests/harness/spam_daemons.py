"""spamd and rspamd on loopback for tests (see shared/test-peers.md §2, §3).

Each daemon gets its own ``/tmp`` folder (mode 755: the workers run as
``nobody`` when the tests run as root) with its config, logs and PID file,
listens on free ports of 127.0.0.1 picked by binding port 0, and is stopped
by its own PID (SIGTERM, bounded wait, then SIGKILL; never pkill/killall,
other programs on a shared machine may run the same binaries). Readiness is
a bounded poll of the daemon's own protocol, never a fixed sleep. A stopped
daemon can be started again on the same ports.

rspamd also loads two test-only rules (``RSPAMD_TEST_LUA``): a zero-score
``GATEWAY_TEST_ENVELOPE`` symbol echoing the envelope rspamd received, and an
``X-Gateway-Test-Action`` message header that forces an action.

Session fixtures ``spamd`` and ``rspamd`` start one of each for the whole
test session; tests that stop a daemon make their own instance. All rspamd
instances of one test run share one Hyperscan cache folder (``hs_cache_dir``):
the first start compiles the URL suffix and regexp databases (about 7 s here),
later starts load them (well under a second).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import psutil
import pytest

from tests.harness.ports import free_ports

SPAMD_BIN = Path("/usr/sbin/spamd")
RSPAMD_BIN = Path("/usr/bin/rspamd")
HOST = "127.0.0.1"
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37  # <linux/prctl.h>

# Test-only rules (loaded from LOCAL_CONFDIR/rspamd.local.lua, test-peers.md §3 config layout):
# GATEWAY_TEST_ENVELOPE (score 0) echoes what the client sent in the IP/Helo/From/Rcpt/Queue-Id/User
# request headers as symbol options, so tests can see that the envelope arrived; a message with a
# "X-Gateway-Test-Action: <action>" header gets that action forced (set_pre_result), which lets
# tests reach actions the default thresholds never produce ("soft reject", "rewrite subject").
RSPAMD_TEST_LUA = r"""
rspamd_config:register_symbol({
  name = 'GATEWAY_TEST_ENVELOPE', score = 0.0, group = 'gateway_test',
  callback = function(task)
    local opts = {}
    local ip = task:get_from_ip()
    if ip and ip:is_valid() then table.insert(opts, 'ip=' .. ip:to_string()) end
    local helo = task:get_helo()
    if helo then table.insert(opts, 'helo=' .. helo) end
    local from = task:get_from('smtp')
    if from and from[1] then table.insert(opts, 'from=' .. (from[1].addr or '')) end
    for _, rcpt in ipairs(task:get_recipients('smtp') or {}) do
      table.insert(opts, 'rcpt=' .. (rcpt.addr or ''))
    end
    local queue_id = task:get_queue_id()
    if queue_id then table.insert(opts, 'queue_id=' .. queue_id) end
    local user = task:get_user()
    if user then table.insert(opts, 'user=' .. user) end
    task:insert_result('GATEWAY_TEST_ENVELOPE', 1.0, opts)
  end,
})
rspamd_config:register_symbol({
  name = 'GATEWAY_TEST_ACTION', type = 'prefilter', priority = 10, group = 'gateway_test',
  callback = function(task)
    local action = task:get_header('X-Gateway-Test-Action')
    if action then task:set_pre_result(action, 'forced by test', 'gateway_test') end
  end,
})
"""

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: ignore *_proxy

# rspamd modules that fetch remote maps or query remote services (test-peers.md §3)
_RSPAMD_OFF = (
    "fuzzy_check",
    "rbl",
    "multimap",
    "phishing",
    "whitelist",
    "asn",
    "neural",
    "dcc",
    "url_redirector",
    "replies",
    "greylist",
    "ratelimit",
    "history_redis",
    "reputation",
    "emails",
)


_hyperscan_cache: Path | None = None


def shared_hyperscan_cache(as_root: bool) -> Path:
    """The Hyperscan cache folder all rspamd instances of this test run share (made on first use).

    Removed when the test process exits; writable by ``nobody`` when running as root,
    since rspamd's hs_helper worker writes it after dropping privileges.
    """
    global _hyperscan_cache
    if _hyperscan_cache is None:
        _hyperscan_cache = Path(tempfile.mkdtemp(prefix="rspamd-hs.", dir="/tmp"))
        _hyperscan_cache.chmod(0o755)
        if as_root:
            shutil.chown(_hyperscan_cache, "nobody", "nogroup")
        atexit.register(shutil.rmtree, _hyperscan_cache, ignore_errors=True)
    return _hyperscan_cache


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants for the duration (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        previous = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
        changed = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        changed = False
    try:
        yield
    finally:
        if changed:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, previous.value, 0, 0, 0)


def require_binary(path: Path) -> None:
    """Fail (not skip) the test when a peer daemon is not installed."""
    if not path.exists():
        pytest.fail(
            f"{path} is missing: run `make test` (it installs the test peers, see shared/test-peers.md §0)",
            pytrace=False,
        )


class _Daemon:
    """A daemon subprocess in its own temporary folder, stopped by its own PID."""

    kind = "daemon"
    ready_timeout = 30.0  # seconds
    stop_timeout = 15.0  # seconds before SIGKILL

    def __init__(self) -> None:
        self.host = HOST
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.kind}.", dir="/tmp"))
        self.dir.chmod(0o755)
        self.process: subprocess.Popen[bytes] | None = None
        self.as_root = os.geteuid() == 0

    @property
    def pid(self) -> int | None:
        """PID of the running daemon's main process (None when stopped)."""
        return self.process.pid if self.process and self.process.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the main process is alive."""
        return self.pid is not None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        raise NotImplementedError

    def _log_files(self) -> list[Path]:
        return [self.dir / "stdout.log"]

    def log_text(self, limit: int = 4000) -> str:
        """The tail of the daemon's log files, for failure messages."""
        parts = []
        for path in self._log_files():
            if path.exists():
                parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts) or "(no log)"

    def start(self) -> None:
        """Start the daemon and wait until it answers its protocol.

        Raises:
            RuntimeError: when it exits early or is not ready within ``ready_timeout`` seconds.
        """
        if self.running:
            return
        with open(self.dir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir
            )
        (self.dir / f"{self.kind}.pid").write_text(f"{self.process.pid}\n")
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode} during start\n{self.log_text()}")
            if self._probe():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.kind} not ready after {self.ready_timeout:g}s\n{self.log_text()}")

    def stop(self) -> None:
        """SIGTERM the daemon by its PID, wait (bounded), then SIGKILL; the same for its workers.

        spamd's parent exits without waiting for its children, which then linger as
        zombies under an init that does not reap; while stopping, this process is the
        children's subreaper (Linux prctl) so it can reap exactly those PIDs.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            workers = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            workers = []
        with _subreaper():
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            _, alive = psutil.wait_procs(workers, timeout=5)
            for worker in alive:  # psutil checks the PID still names the same process
                with contextlib.suppress(psutil.Error):
                    worker.kill()
            psutil.wait_procs(alive, timeout=5)

    def cleanup(self) -> None:
        """Stop and remove the folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class SpamdDaemon(_Daemon):
    """SpamAssassin's spamd, offline (``--local``, ``dns_available no``, no Bayes).

    Attributes:
        port: the TCP port on 127.0.0.1 (free one unless given).
        address: ``"127.0.0.1:PORT"`` as ``[spamassassin] address`` takes it.
    """

    kind = "spamd"

    def __init__(self, port: int | None = None, children: int = 4) -> None:
        super().__init__()
        self.port = port or free_ports(1)[0]
        self.children = children
        home = self.dir / "home"
        home.mkdir()
        if self.as_root:
            shutil.chown(home, "nobody")

    @property
    def address(self) -> str:
        """``host:port`` for the ``[spamassassin] address`` setting."""
        return f"{self.host}:{self.port}"

    def _log_files(self) -> list[Path]:
        return [self.dir / "stdout.log", self.dir / "spamd.log"]

    def _command(self) -> list[str]:
        command = [
            str(SPAMD_BIN),
            f"--listen={self.host}:{self.port}",
            f"--allowed-ips={self.host}",
            "--local",
            "--nouser-config",
            f"--helper-home-dir={self.dir / 'home'}",
            "--cf=dns_available no",
            "--cf=use_bayes 0",
            "--cf=bayes_auto_learn 0",
            f"--max-children={self.children}",
            "--min-children=1",
            f"--pidfile={self.dir / 'spamd.pidfile'}",
            f"--syslog={self.dir / 'spamd.log'}",
        ]
        if self.as_root:
            command.append("--username=nobody")
        return command

    def _probe(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                sock.shutdown(socket.SHUT_WR)
                answer = sock.recv(200)
        except OSError:
            return False
        return answer.startswith(b"SPAMD/1.") and b" 0 PONG" in answer


class RspamdDaemon(_Daemon):
    """rspamd with Debian's config, a private LOCAL_CONFDIR and loopback-only DNS.

    Attributes:
        port: normal worker (``/checkv2``, ``/ping``).
        controller_port: controller worker. proxy_port: proxy worker (disabled).
        url: ``"http://127.0.0.1:PORT"`` as ``[rspamd] url`` takes it.
    """

    kind = "rspamd"
    ready_timeout = 90.0  # the first start of a run compiles Hyperscan databases (~10 s and more)

    def __init__(self, dns: str = "127.0.0.1:53") -> None:
        super().__init__()
        self.port, self.controller_port, self.proxy_port = free_ports(3)
        self.dns = dns
        self._write_config()

    @property
    def url(self) -> str:
        """Base URL of the normal worker."""
        return f"http://{self.host}:{self.port}"

    def _write_config(self) -> None:
        etc = self.dir / "etc"
        for sub in ("etc/local.d", "etc/override.d", "db", "run", "log", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        override = etc / "override.d"
        (override / "worker-normal.inc").write_text(f'bind_socket = "{self.host}:{self.port}";\ncount = 1;\n')
        (override / "worker-controller.inc").write_text(
            f'bind_socket = "{self.host}:{self.controller_port}";\ncount = 1;\n'
        )
        (override / "worker-proxy.inc").write_text(
            f'bind_socket = "{self.host}:{self.proxy_port}";\nenabled = false;\n'
        )
        # DNS only to loopback (nothing listens on :53 here, lookups fail fast); fuzzy_check is off
        (etc / "local.d" / "options.inc").write_text(
            f'filters = "chartable,dkim,regexp";\ntempdir = "{self.dir / "tmp"}";\n'
            f'hs_cache_dir = "{shared_hyperscan_cache(self.as_root)}/";\n'
            f'dns {{ nameserver = ["{self.dns}"]; timeout = 0.2s; retransmits = 1; }}\n'
        )
        (etc / "rspamd.local.lua").write_text(RSPAMD_TEST_LUA)
        for module in _RSPAMD_OFF:
            (etc / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        if self.as_root:
            for sub in ("db", "run", "log", "tmp"):
                shutil.chown(self.dir / sub, "nobody", "nogroup")

    def _log_files(self) -> list[Path]:
        return [self.dir / "stdout.log", self.dir / "log" / "rspamd.log"]

    def _command(self) -> list[str]:
        command = [str(RSPAMD_BIN), "-f"]
        if self.as_root:
            command += ["-u", "nobody", "-g", "nogroup"]
        return command + [
            "-c",
            "/etc/rspamd/rspamd.conf",
            f"--var=LOCAL_CONFDIR={self.dir / 'etc'}",
            f"--var=DBDIR={self.dir / 'db'}",
            f"--var=RUNDIR={self.dir / 'run'}",
            f"--var=LOGDIR={self.dir / 'log'}",
        ]

    def _probe(self) -> bool:
        try:
            with _NO_PROXY.open(f"{self.url}/ping", timeout=2) as response:
                return bool(response.read().strip() == b"pong")
        except (OSError, urllib.error.URLError):
            return False


@pytest.fixture(scope="session")
def spamd() -> Iterator[SpamdDaemon]:
    """One spamd for the test session."""
    require_binary(SPAMD_BIN)
    daemon = SpamdDaemon()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture(scope="session")
def rspamd() -> Iterator[RspamdDaemon]:
    """One rspamd for the test session."""
    require_binary(RSPAMD_BIN)
    daemon = RspamdDaemon()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()
