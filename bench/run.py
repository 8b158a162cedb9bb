#!/usr/bin/env python3
"""`make bench`: the gateway and Postfix side by side, same machine, same run, same workload.

Workload (Postfix's own load tools): ``smtp-source`` sends N messages of about
2 KB (``-l 2048`` plus its From/To/Date/Message-Id header), one recipient each,
over 20 concurrent reused sessions (``-s 20 -d``), to the system under test on
127.0.0.1. The system queues each message durably (250 only after fsync, as
each does by default) and relays it to ``smtp-sink`` on 127.0.0.1, which counts
what it receives.

Systems:

* the gateway: ``python -m gateway run`` from a TOML config (listener without
  TLS, mynetworks loopback, relayhost the sink, spool in a temp dir);
* Postfix: a private instance (``postfix -c DIR``) with its own main.cf,
  master.cf (nothing chrooted), queue and data directories under a temp dir,
  ``inet_interfaces`` 127.0.0.1, ``mynetworks`` loopback, ``relayhost`` the
  sink. A system Postfix, if any, is never touched.

Figures per system and round: accept msg/s (N / smtp-source wall time),
end-to-end msg/s (N / time until the sink has all N), CPU seconds per 1000
messages (the whole process tree: live processes plus reaped children, from
psutil, between an idle moment before the load and the moment the queue is
empty again), peak memory (gateway: peak RSS, VmHWM; Postfix: peak of the sum
of PSS over its processes, sampled from /proc/PID/smaps_rollup).

Variants: ``plain``; ``dkim`` (gateway signing RSA-2048; Postfix stays plain,
the target is "gateway with DKIM >= 0.9x Postfix plain"); ``scan`` (gateway
with clamd + spamd, the test harness's daemons; Postfix stays plain; the
scanners' own CPU and memory are shown apart). Rounds alternate the order
(gateway first in odd rounds, Postfix first in even ones); each round starts
fresh instances, spools and sinks.

Extras: the peak memory of one 50 MB message; delivery after a full sink
outage (the sink answers 4xx to every RCPT while the messages arrive, then a
normal sink comes back on the same port); a profile of the gateway (py-spy
sampling and an strace syscall count of both systems) on a separate, smaller
run that is not part of the figures.

Results go to ``docs/benchmarks.md`` (and the raw numbers to
``bench/last-run.json``). Every wait is bounded; only processes this script
started are stopped, by their PID (Postfix by ``postfix -c DIR stop``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SMTP_SINK = Path("/usr/sbin/smtp-sink")
POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
SCRIPT = shutil.which("script") or "/usr/bin/script"  # util-linux: postfix only talks on a tty
SENDER = "loadgen@bench.example"  # smtp-source puts it in From: too, so the gateway DKIM-signs it
RECIPIENT = "user@dest.example"
VARIANTS = ("plain", "dkim", "scan", "syncfs", "dkim-syncfs")
SESSIONS = 20
BODY_BYTES = 2048
BIG_MESSAGE_BYTES = 50 * 1024 * 1024
HOST = "127.0.0.1"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(text: str) -> None:
    print(time.strftime("%H:%M:%S"), text, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def count_files(*roots: Path, suffix: str = "") -> int:
    total = 0
    for root in roots:
        for _dirpath, _dirs, files in os.walk(root):
            total += sum(1 for name in files if name.endswith(suffix))
    return total


def stop_pid(process: subprocess.Popen[Any] | None, timeout: float = 30.0) -> None:
    """SIGTERM one process we started, wait (bounded), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# ---------------------------------------------------------------- measuring processes

def tree(root_pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu(root_pids: list[int]) -> float:
    """CPU seconds (user + system) of the trees: live processes plus the children they reaped."""
    total = 0.0
    for root_pid in root_pids:
        for process in tree(root_pid):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB from /proc/PID/smaps_rollup; (0, 0) when gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


def vm_hwm_kib(pid: int) -> int:
    """Peak RSS (VmHWM) of one process in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class MemorySampler:
    """Samples the PSS and RSS sums of process trees in a thread; keeps the peaks."""

    def __init__(self, roots: Callable[[], list[int]], interval: float = 0.25) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_pss_kib = 0
        self.peak_rss_kib = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        pss = rss = 0
        processes = [p for root in self.roots() for p in tree(root)]
        for process in processes:
            one_pss, one_rss = memory_kib(process.pid)
            pss += one_pss
            rss += one_rss
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_processes = max(self.peak_processes, len(processes))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()


# ---------------------------------------------------------------- smtp-sink

class Sink:
    """``smtp-sink -c`` on 127.0.0.1:port; counts messages from its running counter output.

    ``refuse``: SMTP commands answered with 4xx (``-r``), for the outage test.
    """

    def __init__(self, workdir: Path, port: int, refuse: str | None = None, name: str = "sink") -> None:
        self.port = port
        self.refuse = refuse
        self.output = workdir / f"{name}-{port}-{time.monotonic_ns()}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        command = [str(SMTP_SINK), "-c", "-u", "nobody"]
        if self.refuse:
            command += ["-r", self.refuse]
        command += [f"{HOST}:{self.port}", "256"]
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT)
        if not wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 10):
            self.stop()
            raise RuntimeError(f"smtp-sink not listening on {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited: {self.output.read_text(errors='replace')[-500:]}")
        return self

    def count(self) -> int:
        """Messages received so far (the last ``mesg=N`` of the counter line)."""
        try:
            with open(self.output, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 200))
                tail = handle.read()
        except OSError:
            return 0
        found = re.findall(rb"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        stop_pid(self.process, 10)

    def cpu(self) -> float:
        return tree_cpu([self.process.pid]) if self.process else 0.0


# ---------------------------------------------------------------- the systems

class System:
    name = "system"
    label = "system"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.workdir = workdir
        self.sink_port = sink_port
        self.port = free_port()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def root_pids(self) -> list[int]:
        raise NotImplementedError

    def queued(self) -> int:
        """Messages still in the queue (any state)."""
        raise NotImplementedError

    def deferred(self) -> int:
        raise NotImplementedError

    def peak_memory_kib(self, sampler: MemorySampler) -> int:
        raise NotImplementedError


class GatewaySystem(System):
    """One ``gateway run`` process with a config written for the bench."""

    name = "gateway"

    def __init__(self, workdir: Path, sink_port: int, *, variant: str = "plain", dkim_keys: Path | None = None,
                 scanners: dict[str, str] | None = None, extra: str = "", whatif: str = "") -> None:
        super().__init__(workdir, sink_port)
        self.variant = variant
        self.whatif = whatif  # patches for bench/whatif_gateway.py; "" = the plain `python -m gateway`
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.config_path = self.state / "gateway.toml"
        self.log_path = self.state / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_url: str | None = None
        self.label = "gateway" + ("" if variant == "plain" else f"+{variant}")
        sections = ""
        if variant.endswith("syncfs"):
            extra += 'spool_sync_method = "syncfs"\n'
        if variant.startswith("dkim"):
            assert dkim_keys is not None
            sections += (f'\n[dkim]\ndomains = ["bench.example"]\nselector = "bench"\n'
                         f'algorithms = ["rsa-sha256"]\nrsa_bits = 2048\nkey_directory = "{dkim_keys}"\n')
        if variant == "scan":
            assert scanners is not None
            sections += ('\n[pipeline]\noutbound = ["antivirus", "spamassassin"]\n'
                         f'\n[antivirus]\nclamd = "{scanners["clamd"]}"\n'
                         f'\n[spamassassin]\naddress = "{scanners["spamd"]}"\n')
        self.config_text = (
            f'state_dir = "{self.state}"\n'
            'metrics_listen = "127.0.0.1:0"\n'
            'myhostname = "gwbench.localhost"\n'
            'mynetworks = ["127.0.0.0/8"]\n'
            f'relayhost = ["[{HOST}]:{sink_port}"]\n'
            'smtp_tls_security_level = "none"\n'
            f"{extra}"
            f'\n[[listener]]\nname = "bench"\naddress = "{HOST}:{self.port}"\ntls = "none"\n'
            f"{sections}")

    def start(self) -> None:
        self.config_path.write_text(self.config_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        program = ["-m", "gateway"]
        if self.whatif:
            env["WHATIF"] = self.whatif
            program = [str(ROOT / "bench" / "whatif_gateway.py")]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *program, "--config", str(self.config_path), "run"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        # "gateway ready" is an info line; with log_level = "warning" the listener's port tells
        ready = wait_until(lambda: "gateway ready" in self.log_text() or port_open(self.port)
                           or self.process.poll() is not None, 90, 0.1)
        if not ready or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"gateway did not start; log:\n{self.log_text()[-3000:]}")
        found = re.search(r"metrics and health on (http://[^/ ]+)/metrics", self.log_text())
        self.metrics_url = found.group(1) if found else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_pid(self.process, 60)

    def root_pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def queued(self) -> int:
        return count_files(self.state / "spool" / "data", suffix=".eml")

    def deferred(self) -> int:
        return count_files(self.state / "spool" / "deferred", suffix=".json")

    def peak_memory_kib(self, sampler: MemorySampler) -> int:
        return max(vm_hwm_kib(self.process.pid), sampler.peak_rss_kib) if self.process else 0

    def metrics(self) -> dict[str, float]:
        """Sums and counts of the gateway's histograms (``name{labels}`` → value)."""
        if not self.metrics_url:
            return {}
        try:
            with NO_PROXY.open(f"{self.metrics_url}/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"(gateway_\w+_(?:sum|count))(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if match:
                values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return values


POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixSystem(System):
    """A private Postfix instance: ``postfix -c DIR`` with its own queue, never the system one."""

    name = "postfix"
    label = "postfix"

    def __init__(self, workdir: Path, sink_port: int, extra: dict[str, str] | None = None) -> None:
        super().__init__(workdir, sink_port)
        self.base = workdir / "postfix"
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "queue"
        self.data_dir = self.base / "data"
        self.log_path = self.base / "postfix.log"
        self.extra = extra or {}

    def main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-bench",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.base),
            "myhostname": "pfbench.localhost",
            "mydomain": "localhost",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[{HOST}]:{self.sink_port}",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "default_destination_concurrency_limit": "20",
            "mailbox_size_limit": "0",
            "biff": "no",
        }
        settings.update(self.extra)
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # postfix(1) reports errors on stderr only when it is a terminal, else to syslog: give it one.
        command = " ".join([str(POSTFIX), "-c", str(self.config_dir), *args])
        return subprocess.run([SCRIPT, "-qec", command, "/dev/null"], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        for path in (self.config_dir, self.queue_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        shutil.chown(self.data_dir, "postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(POSTFIX_MASTER_CF.format(host=HOST, port=self.port))
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix -c {self.config_dir} start failed: {result.stdout}{result.stderr}")
        if not wait_until(lambda: self.master_pid() is not None and port_open(self.port), 30, 0.1):
            self.stop()
            raise RuntimeError(f"private Postfix not ready; log:\n{self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            process = psutil.Process(pid)
            return pid if process.name() == "master" and process.status() != psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return None

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        self._postfix("stop", timeout=90)
        if not wait_until(lambda: not psutil.pid_exists(pid), 30, 0.1):
            self._postfix("abort", timeout=30)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()  # our own instance's master, by PID

    def root_pids(self) -> list[int]:
        pid = self.master_pid()
        return [pid] if pid else []

    def queued(self) -> int:
        return count_files(*(self.queue_dir / d for d in ("maildrop", "incoming", "active", "deferred", "hold")))

    def deferred(self) -> int:
        return count_files(self.queue_dir / "deferred")

    def peak_memory_kib(self, sampler: MemorySampler) -> int:
        return sampler.peak_pss_kib

    def version(self) -> str:
        result = subprocess.run([str(POSTCONF), "-c", str(self.config_dir), "-h", "mail_version"],
                                capture_output=True, text=True, timeout=30)
        return result.stdout.strip() or "?"


# ---------------------------------------------------------------- one load run

@dataclass
class RunResult:
    system: str
    variant: str
    round: int
    position: int  # 1 = ran first in its round
    messages: int
    accept_seconds: float = 0.0
    e2e_seconds: float = 0.0
    accept_rate: float = 0.0
    e2e_rate: float = 0.0
    cpu_seconds: float = 0.0
    cpu_per_1000: float = 0.0
    cores_busy: float = 0.0  # CPU seconds / end-to-end wall seconds
    peak_memory_mb: float = 0.0  # gateway: peak RSS; Postfix: peak PSS sum
    peak_pss_mb: float = 0.0
    peak_processes: int = 0
    delivered: int = 0
    drain_seconds: float = 0.0  # from all-at-sink until the queue was empty
    loop_thread_busy: float = 0.0  # gateway: CPU of its main (event loop) thread / wall time
    user_share: float = 0.0  # user CPU / (user + system CPU)
    scanner_cpu_seconds: float = 0.0
    scanner_cpu_per_1000: float = 0.0
    scanner_peak_pss_mb: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def smtp_source(port: int, messages: int, sessions: int, body_bytes: int,
                timeout: float) -> subprocess.CompletedProcess[bytes]:
    command = [str(SMTP_SOURCE), "-d", "-s", str(sessions), "-m", str(messages), "-l", str(body_bytes),
               "-f", SENDER, "-t", RECIPIENT, f"{HOST}:{port}"]
    return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout)


def cpu_split(root_pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the trees, as :func:`tree_cpu`."""
    user = system = 0.0
    for root_pid in root_pids:
        for process in tree(root_pid):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                user += times.user + times.children_user
                system += times.system + times.children_system
    return user, system


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of the thread whose id is the process id (the main thread: the event loop)."""
    with contextlib.suppress(psutil.Error):
        for thread in psutil.Process(pid).threads():
            if thread.id == pid:
                return float(thread.user_time + thread.system_time)
    return 0.0


def measure(system: System, sink: Sink, result: RunResult, *, body_bytes: int = BODY_BYTES,
            sessions: int = SESSIONS, sample_interval: float = 0.25,
            scanner_pids: Callable[[], list[int]] | None = None) -> RunResult:
    """Drive ``result.messages`` through ``system`` into ``sink``; fill in the figures."""
    n = result.messages
    limit = 60 + n / 5 + body_bytes * n / 2e6  # generous: 5 msg/s, 2 MB/s
    scanner_sampler = MemorySampler(scanner_pids, sample_interval) if scanner_pids else None
    scanner_cpu0 = tree_cpu(scanner_pids()) if scanner_pids else 0.0
    cpu0 = tree_cpu(system.root_pids())
    split0 = cpu_split(system.root_pids())
    gateway_pid = system.root_pids()[0] if isinstance(system, GatewaySystem) else None
    loop0 = main_thread_cpu(gateway_pid) if gateway_pid else 0.0
    with MemorySampler(system.root_pids, sample_interval) as sampler, \
            (scanner_sampler or contextlib.nullcontext()):
        start = time.monotonic()
        source = smtp_source(system.port, n, sessions, body_bytes, limit)
        result.accept_seconds = time.monotonic() - start
        if source.returncode != 0:
            result.error = f"smtp-source exit {source.returncode}: {source.stderr.decode(errors='replace')[-300:]}"
        all_in = wait_until(lambda: sink.count() >= n, max(30.0, limit - result.accept_seconds), 0.05)
        result.e2e_seconds = time.monotonic() - start
        result.delivered = sink.count()
        if not all_in:
            result.error += f" sink has {result.delivered}/{n} after {result.e2e_seconds:.0f}s"
        drained = wait_until(lambda: system.queued() == 0, 120, 0.1)
        result.drain_seconds = time.monotonic() - start - result.e2e_seconds
        if not drained:
            result.error += f" queue not empty ({system.queued()}) after the sink had all"
        result.cpu_seconds = tree_cpu(system.root_pids()) - cpu0
        split1 = cpu_split(system.root_pids())
        loop1 = main_thread_cpu(gateway_pid) if gateway_pid else 0.0
    if scanner_pids:
        result.scanner_cpu_seconds = tree_cpu(scanner_pids()) - scanner_cpu0
        result.scanner_cpu_per_1000 = result.scanner_cpu_seconds * 1000 / n
        assert scanner_sampler is not None
        result.scanner_peak_pss_mb = scanner_sampler.peak_pss_kib / 1024
    result.accept_rate = n / result.accept_seconds
    result.e2e_rate = n / result.e2e_seconds
    result.cpu_per_1000 = result.cpu_seconds * 1000 / n
    result.cores_busy = result.cpu_seconds / (result.e2e_seconds + result.drain_seconds)
    user, kernel = split1[0] - split0[0], split1[1] - split0[1]
    result.user_share = user / (user + kernel) if user + kernel > 0 else 0.0
    if gateway_pid:
        result.loop_thread_busy = (loop1 - loop0) / (result.e2e_seconds + result.drain_seconds)
    result.peak_memory_mb = system.peak_memory_kib(sampler) / 1024
    result.peak_pss_mb = sampler.peak_pss_kib / 1024
    result.peak_processes = sampler.peak_processes
    if isinstance(system, GatewaySystem):
        result.metrics = system.metrics()
    return result


# ---------------------------------------------------------------- scanners (scan variant)

class Scanners:
    """clamd and spamd from the test harness (EICAR-only clamd DB, spamd offline)."""

    def __init__(self, spamd_children: int) -> None:
        from tests.harness.clamd import ClamdDaemon
        from tests.harness.spam_daemons import SpamdDaemon
        self.clamd = ClamdDaemon()
        self.spamd = SpamdDaemon(children=spamd_children)

    def start(self) -> None:
        self.clamd.start()
        self.spamd.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.spamd.cleanup()
        with contextlib.suppress(Exception):
            self.clamd.close()

    def pids(self) -> list[int]:
        return [pid for pid in (self.clamd.pid, self.spamd.pid) if pid]

    def addresses(self) -> dict[str, str]:
        return {"clamd": self.clamd.unix_address, "spamd": self.spamd.address}

    def versions(self) -> dict[str, str]:
        out = {}
        for name, command in (("clamd", ["/usr/sbin/clamd", "--version"]), ("spamd", ["/usr/sbin/spamd", "--version"])):
            with contextlib.suppress(Exception):
                text = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
                out[name] = text.strip().splitlines()[0]
        return out


# ---------------------------------------------------------------- the runs

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mailbench.", dir="/tmp"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.dkim_keys = self.workdir / "dkim-keys"
        self.results: list[RunResult] = []
        self.extras: dict[str, Any] = {}
        self.scanners: Scanners | None = None
        self.started: list[System] = []
        self.counter = 0

    def fresh_dir(self, name: str) -> Path:
        # Every run starts from the same state: what earlier runs left dirty (queue files, their
        # deletion) is written back first, so a run does not pay for its predecessor's writeback.
        os.sync()
        time.sleep(self.args.settle)
        self.counter += 1
        path = self.workdir / f"{self.counter:03d}-{name}"
        path.mkdir()
        path.chmod(0o755)
        return path

    def make_system(self, kind: str, variant: str, sink_port: int, workdir: Path,
                    gateway_extra: str = "", postfix_extra: dict[str, str] | None = None,
                    whatif: str = "") -> System:
        if kind == "postfix":
            return PostfixSystem(workdir, sink_port, postfix_extra)
        scanners = self.scanners.addresses() if (variant == "scan" and self.scanners) else None
        return GatewaySystem(workdir, sink_port, variant=variant, dkim_keys=self.dkim_keys, scanners=scanners,
                             extra=gateway_extra, whatif=whatif)

    @contextlib.contextmanager
    def running(self, system: System) -> Iterator[System]:
        system.start()
        self.started.append(system)
        try:
            yield system
        finally:
            system.stop()
            self.started.remove(system)

    def one_run(self, kind: str, variant: str, round_no: int, position: int, messages: int) -> RunResult:
        workdir = self.fresh_dir(f"{variant}-{kind}-r{round_no}")
        result = RunResult(system=kind, variant=variant, round=round_no, position=position, messages=messages)
        sink = Sink(workdir, free_port()).start()
        try:
            system = self.make_system(kind, variant, sink.port, workdir)
            with self.running(system):
                time.sleep(self.args.settle)  # let start-up work (key loading, process spawning) finish
                scanner_pids = self.scanners.pids if (variant == "scan" and kind == "gateway" and self.scanners) else None
                measure(system, sink, result, scanner_pids=scanner_pids)
        except Exception as error:  # one failed run must not lose the others
            result.error += f" {type(error).__name__}: {error}"
            traceback.print_exc()
        finally:
            sink.stop()
            if not self.args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        log(f"  {variant:5} round {round_no} {kind:7}: accept {result.accept_rate:7.1f} msg/s, "
            f"end-to-end {result.e2e_rate:7.1f} msg/s, CPU {result.cpu_per_1000:6.2f} s/1000, "
            f"mem {result.peak_memory_mb:6.1f} MB, cores {result.cores_busy:4.2f}"
            + (f", scanners {result.scanner_cpu_per_1000:.2f} s/1000" if result.scanner_cpu_seconds else "")
            + (f"  ERROR:{result.error}" if result.error else ""))
        return result

    def variant_rounds(self, variant: str) -> None:
        messages = self.args.scan_messages if variant == "scan" else self.args.messages
        log(f"variant {variant}: {self.args.rounds} rounds of {messages} messages")
        if variant == "scan":
            self.scanners = Scanners(self.args.spamd_children)
            self.scanners.start()
            self.extras["scanner_versions"] = self.scanners.versions()
        try:
            for round_no in range(1, self.args.rounds + 1):
                order = ["gateway", "postfix"] if round_no % 2 else ["postfix", "gateway"]
                for position, kind in enumerate(order, 1):
                    self.results.append(self.one_run(kind, variant, round_no, position, messages))
        finally:
            if self.scanners:
                self.scanners.close()
                self.scanners = None

    # ---- extras

    def small_run(self, kind: str, messages: int, *, sessions: int = SESSIONS, whatif: str = "",
                  gateway_extra: str = "", label: str = "") -> RunResult:
        """One plain run outside the rounds (fresh instance and sink); errors are recorded, not raised."""
        workdir = self.fresh_dir(f"{label or 'small'}-{kind}")
        result = RunResult(system=kind, variant=label or "small", round=1, position=1, messages=messages)
        sink = Sink(workdir, free_port()).start()
        try:
            system = self.make_system(kind, "plain", sink.port, workdir, gateway_extra=gateway_extra, whatif=whatif)
            with self.running(system):
                time.sleep(self.args.settle)
                measure(system, sink, result, sessions=sessions)
        except Exception as error:
            result.error += f" {type(error).__name__}: {error}"
            traceback.print_exc()
        finally:
            sink.stop()
            if not self.args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        return result

    def sessions(self) -> None:
        """Does throughput grow with concurrent sessions? (1, 5, 20, 50; both systems)."""
        messages = self.args.small_messages
        log(f"sessions: {messages} messages with 1, 5, 20 and 50 concurrent sessions, each system")
        out: dict[str, Any] = {"messages": messages, "runs": []}
        for sessions in (1, 5, 20, 50):
            for kind in ("gateway", "postfix"):
                result = self.small_run(kind, messages, sessions=sessions, label=f"sessions{sessions}")
                log(f"  {kind:7} {sessions:2} sessions: accept {result.accept_rate:6.0f}, end-to-end "
                    f"{result.e2e_rate:6.0f} msg/s, CPU {result.cpu_per_1000:.2f} s/1000, "
                    f"loop thread {result.loop_thread_busy:.2f}{'  ERROR:' + result.error if result.error else ''}")
                out["runs"].append(asdict(result) | {"sessions": sessions})
        self.extras["sessions"] = out

    WHATIFS = [  # label, WHATIF patches, extra config, what it shows
        ("as measured", "", "", "the gateway as it is (first of two runs)"),
        ("log_level = warning", "", 'log_level = "warning"\n',
         "the per-message info lines (connect, queued, sent, removed, disconnect) not written"),
        ("16 spool threads", "spool16", "", "the spool's own thread pool with 16 threads instead of "
                                          "gateway.spool.threads.SPOOL_THREADS"),
        ("no fsync (NOT durable)", "nofsync", "", "os.fsync patched out: what the fsyncs cost (their count per message: see the strace table)"),
        ("no fsync + warning log", "nofsync", 'log_level = "warning"\n', "both: what is left is Python work"),
        ("one commit batch in flight", "commit1", "", "group commits one batch at a time instead of "
                                                       "gateway.spool.batcher.COMMIT_BATCHES_IN_FLIGHT"),
        ("as measured, again", "", "", "the gateway as it is (second run: the spread shows the noise)"),
    ]

    def whatif(self) -> None:
        """The gateway with one cost removed at a time (bench/whatif_gateway.py patches; never durable figures)."""
        messages = self.args.small_messages
        log(f"what-if: {messages} messages, {SESSIONS} sessions, the gateway with one cost removed at a time")
        out: dict[str, Any] = {"messages": messages, "runs": []}
        for label, patches, extra, meaning in self.WHATIFS:
            result = self.small_run("gateway", messages, whatif=patches, gateway_extra=extra, label="whatif")
            log(f"  {label:24}: end-to-end {result.e2e_rate:6.0f} msg/s, CPU {result.cpu_per_1000:.2f} s/1000, "
                f"loop thread {result.loop_thread_busy:.2f}{'  ERROR:' + result.error if result.error else ''}")
            out["runs"].append(asdict(result) | {"label": label, "meaning": meaning})
        self.extras["whatif"] = out

    def big_message(self) -> None:
        size = self.args.big_message_mb * 1024 * 1024
        log(f"one {self.args.big_message_mb} MB message, each system")
        out: dict[str, Any] = {"bytes": size}
        for kind in ("gateway", "postfix"):
            workdir = self.fresh_dir(f"big-{kind}")
            sink = Sink(workdir, free_port()).start()
            entry: dict[str, Any] = {}
            try:
                system = self.make_system(kind, "plain", sink.port, workdir,
                                          gateway_extra=f'message_size_limit = "{size + 10 * 1024 * 1024}"\n',
                                          postfix_extra={"message_size_limit": str(size + 10 * 1024 * 1024)})
                with self.running(system):
                    time.sleep(self.args.settle)
                    idle = MemorySampler(system.root_pids)
                    idle.sample()
                    entry["idle_mb"] = (idle.peak_rss_kib if kind == "gateway" else idle.peak_pss_kib) / 1024
                    result = RunResult(system=kind, variant="big", round=1, position=1, messages=1)
                    measure(system, sink, result, body_bytes=size, sessions=1, sample_interval=0.02)
                    entry.update(peak_mb=result.peak_memory_mb, peak_pss_mb=result.peak_pss_mb,
                                 accept_seconds=result.accept_seconds, e2e_seconds=result.e2e_seconds,
                                 cpu_seconds=result.cpu_seconds, delivered=result.delivered, error=result.error)
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {error}"
                traceback.print_exc()
            finally:
                sink.stop()
                if not self.args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
            log(f"  {kind}: {entry}")
            out[kind] = entry
        self.extras["big_message"] = out

    def outage(self) -> None:
        messages = self.args.outage_messages
        log(f"sink outage: {messages} messages while the sink answers 4xx to RCPT, then it comes back")
        timing = {"minimal_backoff_time": "10s", "maximal_backoff_time": "20s", "queue_run_delay": "5s"}
        out: dict[str, Any] = {"messages": messages, "settings": timing}
        for kind in ("gateway", "postfix"):
            workdir = self.fresh_dir(f"outage-{kind}")
            port = free_port()
            refusing = Sink(workdir, port, refuse="RCPT", name="refusing").start()
            sink: Sink | None = None
            entry: dict[str, Any] = {}
            try:
                system = self.make_system(kind, "plain", port, workdir,
                                          gateway_extra="".join(f'{k} = "{v}"\n' for k, v in timing.items()),
                                          postfix_extra=dict(timing))
                with self.running(system):
                    time.sleep(self.args.settle)
                    cpu0 = tree_cpu(system.root_pids())
                    start = time.monotonic()
                    source = smtp_source(system.port, messages, SESSIONS, BODY_BYTES, 60 + messages / 5)
                    entry["accept_seconds"] = time.monotonic() - start
                    entry["accept_rate"] = messages / entry["accept_seconds"]
                    if source.returncode != 0:
                        entry["error"] = f"smtp-source: {source.stderr.decode(errors='replace')[-300:]}"
                    all_deferred = wait_until(lambda: system.deferred() >= messages, 120, 0.2)
                    entry["all_deferred_seconds"] = time.monotonic() - start
                    entry["deferred_reached"] = system.deferred()
                    if not all_deferred:
                        entry["error"] = entry.get("error", "") + f" only {system.deferred()} deferred"
                    refusing.stop()
                    sink = Sink(workdir, port, name="back").start()
                    back = time.monotonic()
                    first = wait_until(lambda: sink.count() >= 1, 60, 0.05)
                    entry["first_delivery_seconds"] = time.monotonic() - back if first else None
                    done = wait_until(lambda: sink.count() >= messages, 60 + messages / 5, 0.05)
                    entry["all_delivered_seconds"] = time.monotonic() - back
                    if not done:
                        entry["error"] = entry.get("error", "") + f" sink has {sink.count()}/{messages}"
                    wait_until(lambda: system.queued() == 0, 60, 0.1)
                    time.sleep(2)  # anything extra (a duplicate) would show up now
                    entry["delivered"] = sink.count()
                    entry["duplicates"] = max(0, sink.count() - messages)
                    entry["cpu_seconds"] = tree_cpu(system.root_pids()) - cpu0
                    if entry["first_delivery_seconds"] is not None and done:
                        burst = entry["all_delivered_seconds"] - entry["first_delivery_seconds"]
                        entry["drain_rate"] = messages / burst if burst > 0 else None
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {error}"
                traceback.print_exc()
            finally:
                refusing.stop()
                if sink:
                    sink.stop()
                if not self.args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
            log(f"  {kind}: {entry}")
            out[kind] = entry
        self.extras["outage"] = out

    def profile(self) -> None:
        """py-spy on the gateway (each variant) and strace -c on both systems, on separate smaller runs."""
        messages = self.args.profile_messages
        out: dict[str, Any] = {"messages": messages}
        py_spy = find_py_spy()
        strace = shutil.which("strace")
        log(f"profile: {messages} messages (py-spy: {py_spy or 'missing'}, strace: {strace or 'missing'})")
        if py_spy:
            spy: dict[str, Any] = {}
            counts = {"plain": messages, "dkim": max(100, messages // 2), "scan": min(self.args.scan_messages, 300)}
            for variant in [v for v in self.args.variants if v in counts]:  # syncfs variants: as plain, dkim
                count = counts[variant]
                # scan: all threads, so that native frames under the scanner clients (ssl, sockets) show
                spy[variant] = self._profile_py_spy(py_spy, variant, count, gil=variant != "scan")
            spy["plain-wall"] = self._profile_py_spy(py_spy, "plain", messages, gil=False)
            out["py_spy"] = spy
        if strace:
            count = min(messages, 2000)
            out["strace"] = {kind: self._strace(strace, kind, count) for kind in ("gateway", "postfix")}
        self.extras["profile"] = out

    def _profile_py_spy(self, py_spy: str, variant: str, messages: int, *, gil: bool) -> dict[str, Any]:
        workdir = self.fresh_dir(f"profile-pyspy-{variant}")
        sink = Sink(workdir, free_port()).start()
        raw = workdir / "py-spy.txt"
        try:
            if variant == "scan":
                self.scanners = Scanners(self.args.spamd_children)
                self.scanners.start()
            system = self.make_system("gateway", variant, sink.port, workdir)
            with self.running(system):
                time.sleep(self.args.settle)
                command = [py_spy, "record", "--pid", str(system.root_pids()[0]), "--rate", "100",
                           "--format", "raw", "--output", str(raw), "--nonblocking"] + (["--gil"] if gil else [])
                spy = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
                time.sleep(1)
                result = RunResult(system="gateway", variant="profile", round=1, position=1, messages=messages)
                measure(system, sink, result)
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(10)
            summary = summarise_py_spy(raw.read_text(errors="replace")) if raw.exists() else {"error": "no output"}
            if raw.exists():  # kept for a closer look (speedscope, flamegraph.pl) next to the raw results
                keep = profiles_dir(self.args.json)
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, keep / f"{variant}{'-gil' if gil else '-all-threads'}.collapsed.txt")
            summary["run"] = {"messages": messages, "e2e_rate": result.e2e_rate, "cpu_per_1000": result.cpu_per_1000,
                              "gil": gil}
            log(f"  py-spy {variant}{' --gil' if gil else ''}: {summary.get('buckets', summary.get('error'))}")
            return summary
        except Exception as error:
            traceback.print_exc()
            return {"error": f"{type(error).__name__}: {error}"}
        finally:
            sink.stop()
            if self.scanners:
                self.scanners.close()
                self.scanners = None
            if not self.args.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    def _strace(self, strace: str, kind: str, messages: int) -> dict[str, Any]:
        workdir = self.fresh_dir(f"profile-strace-{kind}")
        sink = Sink(workdir, free_port()).start()
        summary_path = workdir / "strace.txt"
        try:
            system = self.make_system(kind, "plain", sink.port, workdir)
            with self.running(system):
                time.sleep(self.args.settle)
                pids = [p.pid for root in system.root_pids() for p in tree(root)]
                command = [strace, "-f", "-c", "-o", str(summary_path)]
                for pid in pids:
                    command += ["-p", str(pid)]
                tracer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                time.sleep(1.5)
                result = RunResult(system=kind, variant="strace", round=1, position=1, messages=messages)
                measure(system, sink, result)
                tracer.send_signal(signal.SIGINT)
                try:
                    tracer.wait(60)
                except subprocess.TimeoutExpired:
                    tracer.kill()
                    tracer.wait(10)
            return summarise_strace(summary_path.read_text(errors="replace"), messages)
        except Exception as error:
            traceback.print_exc()
            return {"error": f"{type(error).__name__}: {error}"}
        finally:
            sink.stop()
            if not self.args.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    def close(self) -> None:
        for system in list(self.started):
            with contextlib.suppress(Exception):
                system.stop()
        if self.scanners:
            self.scanners.close()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def profiles_dir(json_path: str) -> Path:
    """Where the raw py-spy stacks of a run go: bench/last-run-profiles/ next to bench/last-run.json."""
    path = Path(json_path)
    return path.parent / f"{path.stem}-profiles"


def find_py_spy() -> str | None:
    local = ROOT / "bench" / ".tools" / "bin" / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy") or (str(Path(sys.executable).parent / "py-spy")
                                      if (Path(sys.executable).parent / "py-spy").exists() else None)


def _frame_name(frame: str) -> str:
    """``handle_DATA (gateway/smtpd/handler.py:250)`` → ``gateway/smtpd/handler.py:handle_DATA``."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not match:
        return frame.strip()
    function, path = match.groups()
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{function}"


# Buckets of the gateway's CPU, by the first matching frame (outermost first) of each sample.
PROFILE_BUCKETS = [
    ("spool commit (thread: write + fsync)", ("gateway/spool/store.py:Spool.commit",
                                              "gateway/smtpd/handler.py:SmtpHandler._timed_commit")),
    ("spool claim/read/remove (threads)", ("gateway/spool/store.py:",)),
    ("logging", ("logging/__init__.py:", "logging/handlers.py:")),
    ("DKIM signing", ("gateway/dkim/signer.py:", "dkim/")),
    ("content scanners (policies)", ("policies/antivirus", "policies/spamassassin", "policies/rspamd",
                                     "policies/spam_levels", "aiospamc/", "pyclamd/")),
    ("relay: SMTP client (aiosmtplib)", ("aiosmtplib/",)),
    ("relay worker (gateway/relay)", ("gateway/relay/",)),
    ("receive: DATA handling (gateway)", ("gateway/smtpd/handler.py:SmtpHandler.handle_DATA",)),
    ("receive: other gateway handlers (MAIL, RCPT, sessions)", ("gateway/smtpd/handler.py:", "gateway/smtpd/protocol.py:",
                                                                "gateway/pipeline", "gateway/policy", "gateway/",
                                                                "policies/")),
    ("receive: aiosmtpd protocol", ("aiosmtpd/",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("asyncio event loop / streams / threads", ("asyncio/", "concurrent/futures/", "threading.py:", "selectors.py:")),
]
STACK_WIDE_BUCKETS = 5  # the first five areas claim a sample when any frame of its stack is theirs


def bucket_of(frames: list[str]) -> str:
    """The area of one sample (frames outermost first).

    The first four areas (spool commit, spool claim/read/remove, logging, DKIM, scanners...) win when any
    frame of the stack is theirs, so everything they call counts for them. Otherwise the innermost
    frame that belongs to an area decides; the event loop (asyncio, threads, selectors) only when no
    other area's frame is on the stack, so socket I/O counts for whoever does it.
    """
    frames = [f for f in frames if not f.startswith(("gateway/cli.py", "gateway/__main__.py", "gateway/app.py"))]
    for label, prefixes in PROFILE_BUCKETS[:STACK_WIDE_BUCKETS]:
        if any(frame.startswith(prefixes) for frame in frames):
            return label
    loop_label, loop_prefixes = PROFILE_BUCKETS[-1]
    for frame in reversed(frames):
        for label, prefixes in PROFILE_BUCKETS[STACK_WIDE_BUCKETS:-1]:
            if frame.startswith(prefixes):
                return label
    if any(frame.startswith(loop_prefixes) for frame in frames):
        return loop_label
    return "other"


# Known costs looked for in every profile: (key, frames that must all be on the stack (prefix match, any of
# the alternatives separated by |), what it is). Shares are of all samples of that profile.
PROFILE_PATTERNS = [
    ("getaddr", ("aiosmtpd/smtp.py:SMTP._getaddr",),
     "aiosmtpd's `SMTP._getaddr` (MAIL FROM / RCPT TO address parsing through `email._header_value_parser`)"),
    ("getaddr_class", ("aiosmtpd/smtp.py:SMTP._getaddr", "<frozen abc>:ABCMeta.__new__|typing.py:Protocol.__init_subclass__"),
     "of which creating a class: `_getaddr` defines `class AddrSpec(typing.Protocol)` inside the function, "
     "so every MAIL and RCPT command builds a new ABC class"),
    ("logging", ("logging/",), "the standard `logging` module (formatting and writing the log lines)"),
    ("metrics", ("prometheus_client/",), "prometheus_client counters and histograms"),
    ("commit_gil", ("gateway/spool/store.py:Spool.commit",),
     "the Python side of the spool commit (hashing, JSON, file calls) while holding the GIL"),
    ("to_json", ("gateway/spool/entry.py:",), "building and parsing spool records (`gateway/spool/entry.py`)"),
    ("received", ("gateway/pipeline/received.py:",), "building the Received: header (`email.utils.format_datetime` ...)"),
    ("aiosmtplib", ("aiosmtplib/",), "aiosmtplib, the relay's SMTP client"),
    ("dkim", ("gateway/dkim/signer.py:",), "DKIM signing (dkimpy canonicalisation, hashing, the RSA signature)"),
    ("aiospamc_ssl", ("aiospamc/", "ssl.py:SSLContext.load_default_certs"),
     "`ssl.create_default_context()` run by aiospamc for every request"),
]


def summarise_py_spy(raw: str) -> dict[str, Any]:
    """Self time per function and time per bucket from py-spy's collapsed stacks."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    patterns: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        buckets[bucket_of(frames)] += count
        for key, required, _text in PROFILE_PATTERNS:
            if all(any(f.startswith(tuple(alt.split("|"))) for f in frames) for alt in required):
                patterns[key] += count
    if not total:
        return {"error": "no samples"}
    pct = lambda c: round(100.0 * c / total, 1)  # noqa: E731

    def ranked(counter: collections.Counter[str]) -> list[tuple[str, int]]:
        return sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return {
        "samples": total,
        "buckets": [(label, pct(count)) for label, count in ranked(buckets)],
        "patterns": {key: pct(count) for key, count in patterns.items()},
        "self": [(name, pct(count)) for name, count in ranked(self_time)[:20]],
        "inclusive": [(name, pct(count)) for name, count in ranked(inclusive)[:60]
                      if name.startswith(("gateway/", "policies/", "aiosmtpd/", "aiosmtplib/", "logging/",
                                          "prometheus_client/", "email/", "asyncio/selector_events",
                                          "asyncio/streams", "aiospamc/", "pyclamd/", "ssl.py", "dkim/"))
                      and not name.startswith(("gateway/cli.py", "gateway/__main__.py"))][:25],
    }


def summarise_strace(text: str, messages: int) -> dict[str, Any]:
    """Calls per message of the syscalls that matter, from ``strace -c`` output."""
    calls: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^[0-9.]+$", parts[0]) and parts[-1] not in ("total",):
            try:
                name = parts[-1]
                calls[name] = int(parts[3])
                seconds[name] = float(parts[1])
            except (ValueError, IndexError):
                continue
    total_calls = sum(calls.values())
    keys = ("fsync", "fdatasync", "rename", "renameat", "renameat2", "unlink", "unlinkat", "openat", "write",
            "writev", "sendto", "sendmsg", "read", "recvfrom", "epoll_wait", "futex", "clone3", "clone",
            "mmap", "munmap", "sendfile", "getrandom", "lseek", "fstat", "newfstatat")
    return {
        "messages": messages,
        "per_message": {k: round(calls[k] / messages, 2) for k in keys if k in calls},
        "total_per_message": round(total_calls / messages, 1),
        "top": sorted(((k, round(v / messages, 2)) for k, v in calls.items()), key=lambda kv: -kv[1])[:12],
    }


# ---------------------------------------------------------------- machine and report

def machine() -> dict[str, Any]:
    info: dict[str, Any] = {}
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    models = re.findall(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    info["cpu"] = f"{models[0] if models else platform.processor()} ({psutil.cpu_count()} logical CPUs)"
    info["virtualised"] = bool(re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.M))
    mhz = re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
    info["cpu_mhz"] = mhz[0] if mhz else "?"
    info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    info["kernel"] = platform.release()
    with contextlib.suppress(OSError):
        os_release = dict(re.findall(r'^(\w+)="?(.*?)"?$', Path("/etc/os-release").read_text(), re.M))
        info["os"] = os_release.get("PRETTY_NAME", "?")
    info["python"] = platform.python_version()
    info["load_before"] = [round(x, 2) for x in os.getloadavg()]
    versions = {}
    for module in ("aiosmtpd", "aiosmtplib", "dkimpy", "cryptography", "prometheus_client", "psutil"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            versions[module] = version(module.replace("_", "-") if module != "prometheus_client" else "prometheus-client")
    import ssl
    versions["openssl"] = ssl.OPENSSL_VERSION
    with contextlib.suppress(Exception):
        versions["postfix"] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "postfix"], capture_output=True,
                                             text=True, timeout=30).stdout.strip()
    info["versions"] = versions
    with contextlib.suppress(Exception):
        best = None
        for part in psutil.disk_partitions(all=True):
            if tempfile.gettempdir().startswith(part.mountpoint) and (best is None or len(part.mountpoint) > len(best.mountpoint)):
                best = part
        if best is not None:
            info["filesystem"] = f"{best.fstype} on {best.device} ({best.mountpoint}, {best.opts})"
    with contextlib.suppress(Exception):
        others = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] in
                  ("pytest", "clamd", "spamd", "rspamd", "python3", "python") and p.pid != os.getpid()]
        info["other_processes_at_start"] = len(others)
    return info


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(med(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


METRICS = [  # attribute, title, format, better
    ("accept_rate", "accept msg/s", ".0f", "higher"),
    ("e2e_rate", "end-to-end msg/s", ".0f", "higher"),
    ("cpu_per_1000", "CPU s per 1000 msg", ".2f", "lower"),
    ("cores_busy", "cores busy (CPU s / wall s)", ".2f", "-"),
    ("user_share", "user share of that CPU (rest: kernel)", ".2f", "-"),
    ("loop_thread_busy", "gateway event-loop thread busy (its CPU s / wall s)", ".2f", "-"),
    ("peak_memory_mb", "peak memory MB¹", ".1f", "lower"),
    ("peak_processes", "processes (peak)", ".0f", "-"),
]


def paired(results: list[RunResult], variant: str) -> list[tuple[RunResult, RunResult]]:
    gw = {r.round: r for r in results if r.variant == variant and r.system == "gateway" and not r.error}
    pf = {r.round: r for r in results if r.variant == variant and r.system == "postfix" and not r.error}
    return [(gw[k], pf[k]) for k in sorted(gw) if k in pf]


def report(bench: Bench, info: dict[str, Any], started: float) -> str:
    args = bench.args
    results = bench.results
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks: the gateway and Postfix side by side")
    add("")
    argv = REPORT_ARGV if REPORT_ARGV is not None else sys.argv[1:]
    finished = REPORT_TIME or time.time()
    add("Generated by `make bench` (`bench/run.py"
        + (" " + " ".join(argv) if argv else "") + f"`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(finished))}; "
        f"the run took {(finished - started) / 60:.1f} minutes. Do not edit by hand: run it again.")
    add("")
    add("## Machine")
    add("")
    add(f"* CPU: {info['cpu']}, {info['cpu_mhz']} MHz{', virtualised (hypervisor flag set)' if info['virtualised'] else ''}")
    add(f"* Memory: {info['memory_gib']} GiB; kernel {info['kernel']}; {info.get('os', '?')}")
    add(f"* Disk: {info.get('filesystem', '?')} (spools and Postfix queues live in a temp dir under /tmp)")
    add(f"* Python {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if bench.extras.get("scanner_versions"):
        add("* Scanners: " + "; ".join(f"{v}" for v in bench.extras["scanner_versions"].values()))
    add(f"* Load average at start {info['load_before']}, at end {info.get('load_after')}; "
        f"{info.get('other_processes_at_start', 0)} other python/pytest/scanner processes were running at start. "
        "The machine is shared: other work running at the same time lowers both systems' figures; "
        "alternating rounds and per-round ratios keep the comparison fair, the absolute numbers less so.")
    add("")
    add("Reproduce with `make bench` (as root; it installs Postfix with debconf \"No configuration\", the "
        "scanners, strace and py-spy through `bench/install.sh`, then runs `bench/run.py`). Options go through "
        "`BENCH_ARGS`, e.g. `make bench BENCH_ARGS=--quick` for a smoke run that writes `bench/quick-report.md`, or "
        "`BENCH_ARGS=\"--messages 5000 --rounds 5 --variants plain,dkim\"`; `bench/run.py --help` lists them. "
        "Raw numbers of the last run: `bench/last-run.json`.")
    add("")
    add("## Workload and method")
    add("")
    add(f"* `smtp-source -d -s {SESSIONS} -m N -l {BODY_BYTES} -f {SENDER} -t {RECIPIENT} 127.0.0.1:PORT` "
        f"(Postfix's own load generator): N = {args.messages} messages (scan variant: {args.scan_messages}, "
        f"because spamd handles {scan_rate(results)} msg/s here) of about "
        f"2.2 KB with From/To/Date/Message-Id, one recipient each, over {SESSIONS} concurrent sessions that are reused "
        "(smtp-source speaks HELO, no pipelining).")
    add("* The system under test queues each message durably before its 250 and relays it to `smtp-sink -c` on "
        "127.0.0.1, which counts messages. Postfix: a private instance (`postfix -c DIR`, own main.cf/master.cf, "
        "queue and data directory in a temp dir, nothing chrooted, `relayhost = [127.0.0.1]:sink`, "
        "`mynetworks = 127.0.0.0/8`, `default_destination_concurrency_limit = 20`, logging to a file via postlogd), "
        "otherwise Debian defaults. Gateway: `python -m gateway run`, listener without TLS, "
        "`mynetworks = 127.0.0.0/8`, relayhost the sink, default limits (20 per destination), info logging to a file.")
    add("* **accept msg/s** = N / wall time of smtp-source. **end-to-end msg/s** = N / time from the start of "
        "smtp-source until the sink has all N. **CPU s per 1000 msg**: user + system CPU of the whole process tree "
        "(live processes plus reaped children: Postfix's master, smtpd, cleanup, qmgr, smtp, trivial-rewrite, "
        "anvil, postlogd...; the gateway is one process with its threads) from an idle moment before the load "
        "until the queue is empty again. **cores busy** = those CPU seconds / that wall time. "
        "**peak memory**¹: the gateway's peak RSS (VmHWM); for Postfix the peak of the PSS sum over all its "
        f"processes, sampled every 0.25 s from /proc/PID/smaps_rollup (PSS splits shared pages between processes; "
        "a RSS sum would count the shared libraries once per process).")
    add(f"* {args.rounds} rounds per variant; the order alternates (odd rounds: gateway first). Each run starts a fresh "
        "instance, spool and sink, after `sync` and a moment of idle (so no run pays for the writeback of the run "
        "before it); figures are medians with (min–max) over the rounds; ratios are taken per round "
        "(gateway / Postfix of the same round), then the median and range of those.")
    add("* Variants: **plain**; **dkim**: the gateway signs every message (RSA-2048, rsa-sha256, relaxed/relaxed) "
        "and is compared with plain Postfix (the target is \"with DKIM at least 0.9× Postfix's plain figure\"; "
        "Postfix + OpenDKIM is not measured); **scan**: the gateway runs clamd (INSTREAM over a Unix socket) and "
        "spamd for every message and is compared with plain Postfix; the scanners' own CPU and memory are shown apart. "
        "The scanners are the test harness's: clamd with a two-signature EICAR-only database (no freshclam offline: "
        "its cost is the protocol and stream handling, not a real signature set) and spamd offline "
        f"(`--local`, no DNS, no Bayes, {args.spamd_children} children); **syncfs** and **dkim-syncfs**: plain and "
        "dkim with `spool_sync_method = \"syncfs\"` (each group commit makes its files durable with two "
        "`syncfs(2)` calls instead of one fsync per file and directory; see README), against plain Postfix.")
    add("")
    for variant in args.variants:
        pairs = paired(results, variant)
        runs = [r for r in results if r.variant == variant]
        if not runs:
            continue
        n = runs[0].messages
        add(f"## Variant: {variant} (N = {n})")
        add("")
        gw_label = {"plain": "gateway", "dkim": "gateway + DKIM", "scan": "gateway + clamd + spamd",
                    "syncfs": "gateway, syncfs", "dkim-syncfs": "gateway + DKIM, syncfs"}[variant]
        add(f"| figure | {gw_label} | Postfix (plain) | ratio gateway/Postfix |")
        add("|---|---|---|---|")
        for attr, title, fmt, better in METRICS:
            gw = [getattr(r, attr) for r in runs if r.system == "gateway" and not r.error]
            pf = [getattr(r, attr) for r in runs if r.system == "postfix" and not r.error]
            ratios = [getattr(g, attr) / getattr(p, attr) for g, p in pairs if getattr(p, attr)]
            if attr == "loop_thread_busy":
                pf = []
            add(f"| {title} | {spread(gw, fmt)} | {spread(pf, fmt)} | "
                f"{spread(ratios, '.2f') if better != '-' else '–'} |")
        add("")
        add("Per round:")
        add("")
        add("| round | order | gateway accept / e2e msg/s | Postfix accept / e2e msg/s | ratio e2e | "
            "gateway CPU s/1000 | Postfix CPU s/1000 | ratio CPU | gateway RSS MB | Postfix PSS MB |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for round_no in sorted({r.round for r in runs}):
            g = next((r for r in runs if r.round == round_no and r.system == "gateway"), None)
            p = next((r for r in runs if r.round == round_no and r.system == "postfix"), None)
            if g is None or p is None:
                continue
            order = "gateway, Postfix" if g.position == 1 else "Postfix, gateway"
            ratio_e2e = f"{g.e2e_rate / p.e2e_rate:.2f}" if p.e2e_rate and not (g.error or p.error) else "–"
            ratio_cpu = f"{g.cpu_per_1000 / p.cpu_per_1000:.2f}" if p.cpu_per_1000 and not (g.error or p.error) else "–"
            add(f"| {round_no} | {order} | {g.accept_rate:.0f} / {g.e2e_rate:.0f} | {p.accept_rate:.0f} / "
                f"{p.e2e_rate:.0f} | {ratio_e2e} | {g.cpu_per_1000:.2f} | {p.cpu_per_1000:.2f} | {ratio_cpu} | "
                f"{g.peak_memory_mb:.1f} | {p.peak_memory_mb:.1f} |")
        errors = [r for r in runs if r.error]
        for r in errors:
            add(f"\n**Run failed** ({r.system}, round {r.round}): {r.error.strip()}")
        if variant == "scan":
            gw = [r for r in runs if r.system == "gateway" and not r.error]
            if gw:
                add("")
                add("Scanner cost, apart (clamd + spamd process trees, during the gateway's scan runs):")
                add("")
                add("| figure | median (min–max) |")
                add("|---|---|")
                add(f"| scanner CPU s per 1000 msg | {spread([r.scanner_cpu_per_1000 for r in gw], '.2f')} |")
                add(f"| gateway + scanner CPU s per 1000 msg | "
                    f"{spread([r.cpu_per_1000 + r.scanner_cpu_per_1000 for r in gw], '.2f')} |")
                add(f"| scanner peak PSS MB | {spread([r.scanner_peak_pss_mb for r in gw], '.1f')} |")
                for scanner in ("antivirus", "spamassassin"):
                    means = [mean_metric(r.metrics, "gateway_scan_duration_seconds", f'"{scanner}"') for r in gw]
                    means = [m * 1000 for m in means if m is not None]
                    if means:
                        add(f"| mean {scanner} scan latency at DATA, ms | {spread(means, '.1f')} |")
        gw_runs = [r for r in runs if r.system == "gateway" and not r.error and r.metrics]
        if gw_runs:
            commit = [mean_metric(r.metrics, "gateway_spool_commit_duration_seconds") for r in gw_runs]
            delivery = [mean_metric(r.metrics, "gateway_delivery_attempt_duration_seconds") for r in gw_runs]
            commit = [c * 1000 for c in commit if c is not None]
            delivery = [d * 1000 for d in delivery if d is not None]
            add("")
            add(f"Gateway internals (its own histograms): mean spool commit {spread(commit, '.1f')} ms, "
                f"mean delivery attempt {spread(delivery, '.1f')} ms.")
        add("")
    extras_report(bench, lines)
    targets_report(bench, lines)
    analysis_report(bench, lines)
    add("")
    add("¹ Gateway: peak RSS of its one process. Postfix: peak of the PSS sum over all its processes.")
    return "\n".join(lines) + "\n"


def scan_rate(results: list[RunResult]) -> str:
    rates = [r.e2e_rate for r in results if r.variant == "scan" and r.system == "gateway" and not r.error]
    return f"about {med(rates):.0f}" if rates else "only tens of"


def mean_metric(metrics: dict[str, float], name: str, label: str = "") -> float | None:
    total = sum(v for k, v in metrics.items() if k.startswith(name + "_sum") and label in k)
    count = sum(v for k, v in metrics.items() if k.startswith(name + "_count") and label in k)
    return total / count if count else None


def extras_report(bench: Bench, lines: list[str]) -> None:
    add = lines.append
    sessions = bench.extras.get("sessions")
    if sessions:
        add(f"## Does throughput grow with concurrency? ({sessions['messages']} messages per run)")
        add("")
        add("The plain workload with 1, 5, 20 and 50 concurrent smtp-source sessions; one run each, fresh instances.")
        add("")
        add("| sessions | gateway accept / e2e msg/s | gateway event-loop thread busy | Postfix accept / e2e msg/s | "
            "ratio e2e |")
        add("|---|---|---|---|---|")
        by = {(r["system"], r["sessions"]): r for r in sessions["runs"]}
        for count in sorted({r["sessions"] for r in sessions["runs"]}):
            g, p = by.get(("gateway", count)), by.get(("postfix", count))
            if not g or not p:
                continue
            ratio = f"{g['e2e_rate'] / p['e2e_rate']:.2f}" if p["e2e_rate"] else "–"
            add(f"| {count} | {g['accept_rate']:.0f} / {g['e2e_rate']:.0f} | {g['loop_thread_busy']:.2f} | "
                f"{p['accept_rate']:.0f} / {p['e2e_rate']:.0f} | {ratio} |"
                + (f" {(g['error'] + ' ' + p['error']).strip()}" if g["error"] or p["error"] else ""))
        add("")
    whatif = bench.extras.get("whatif")
    if whatif:
        add(f"## What if: the gateway with one cost removed ({whatif['messages']} messages per run)")
        add("")
        add("Experiments, not configurations to run: `bench/whatif_gateway.py` starts the gateway's CLI with a patch "
            "applied in-process (the gateway's files are unchanged); one run each, plain workload, "
            f"{SESSIONS} sessions.")
        add("")
        add("| run | what it shows | end-to-end msg/s | CPU s per 1000 msg | event-loop thread busy |")
        add("|---|---|---|---|---|")
        for r in whatif["runs"]:
            add(f"| {r['label']} | {r['meaning']} | {r['e2e_rate']:.0f} | {r['cpu_per_1000']:.2f} | "
                f"{r['loop_thread_busy']:.2f} |" + (f" {r['error'].strip()}" if r["error"] else ""))
        add("")
    big = bench.extras.get("big_message")
    if big:
        add(f"## One {big['bytes'] // (1024 * 1024)} MB message")
        add("")
        add("One message (`smtp-source -m 1 -s 1 -l SIZE`), `message_size_limit` raised on both; fresh instances.")
        add("")
        add("| | idle memory MB | peak memory MB¹ | accept s | end-to-end s | CPU s |")
        add("|---|---|---|---|---|---|")
        for kind, title in (("gateway", "gateway (RSS)"), ("postfix", "Postfix (PSS sum)")):
            e = big.get(kind, {})
            if e.get("error") and "peak_mb" not in e:
                add(f"| {title} | failed: {e['error']} | | | | |")
                continue
            add(f"| {title} | {e.get('idle_mb', 0):.1f} | {e.get('peak_mb', 0):.1f} | {e.get('accept_seconds', 0):.2f} | "
                f"{e.get('e2e_seconds', 0):.2f} | {e.get('cpu_seconds', 0):.2f} |"
                + (f" {e['error']}" if e.get("error") else ""))
        add("")
    outage = bench.extras.get("outage")
    if outage:
        add("## Delivery after a full sink outage")
        add("")
        settings = ", ".join(f"`{k} = {v}`" for k, v in outage["settings"].items())
        add(f"{outage['messages']} messages are sent while the sink answers every RCPT with "
            "`450 4.3.0` (`smtp-sink -r RCPT`); once every message is in the deferred queue the sink is replaced by a "
            f"normal one on the same port. Both systems run with {settings} so that the retry comes within seconds; "
            "the time to recover is therefore mostly the retry schedule. \"drain msg/s\" is the messages divided by "
            "the time between the first and the last delivery after the sink came back; it is the system's own rate "
            "only when the retries of all messages fall due together.")
        add("")
        add("| | accept msg/s (sink refusing) | all deferred after s | first delivery after sink back, s | "
            "all delivered after sink back, s | drain msg/s | delivered | duplicates |")
        add("|---|---|---|---|---|---|---|---|")
        for kind, title in (("gateway", "gateway"), ("postfix", "Postfix")):
            e = outage.get(kind, {})
            def f(key: str, fmt: str) -> str:
                value = e.get(key)
                return format(value, fmt) if isinstance(value, (int, float)) else "–"
            add(f"| {title} | {f('accept_rate', '.0f')} | {f('all_deferred_seconds', '.1f')} | "
                f"{f('first_delivery_seconds', '.1f')} | {f('all_delivered_seconds', '.1f')} | {f('drain_rate', '.0f')} | "
                f"{f('delivered', 'd')} | {f('duplicates', 'd')} |" + (f" {e['error']}" if e.get("error") else ""))
        add("")
    profile = bench.extras.get("profile")
    if profile:
        add("## Where the gateway spends its time")
        add("")
        add("Separate, smaller runs under a profiler; not part of the figures above. py-spy samples the gateway "
            "100 times a second (`record --nonblocking`). With `--gil` only the thread holding the GIL is sampled: "
            "that is the Python CPU work which, in one process, cannot use more than one core. The `plain-wall` and `scan` "
            "runs sample every thread that is not idle, so they also show threads blocked in fsync. Each sample is "
            "counted once: in the first of "
            + ", ".join(label for label, _ in PROFILE_BUCKETS[:STACK_WIDE_BUCKETS])
            + " when any frame of its stack is theirs; otherwise in the area of its innermost frame that has one ("
            + ", ".join(label for label, _ in PROFILE_BUCKETS[STACK_WIDE_BUCKETS:-1])
            + "), and in the event loop area only when nothing else is on the stack. Raw collapsed stacks are "
            "kept in `bench/last-run-profiles/` (not committed).")
        add("")
        spies = profile.get("py_spy") or {}
        for name, spy in spies.items():
            if not spy or spy.get("error"):
                add(f"py-spy ({name}) failed: {(spy or {}).get('error')}")
                add("")
                continue
            run = spy.get("run", {})
            add(f"### py-spy: {name}{' (--gil)' if run.get('gil') else ' (all threads)'}, "
                f"{run.get('messages')} messages, {spy['samples']} samples, "
                f"{run.get('e2e_rate', 0):.0f} msg/s end-to-end under the profiler")
            add("")
            add("| area | % of samples |")
            add("|---|---|")
            for label, pct in spy["buckets"]:
                add(f"| {label} | {pct} |")
            add("")
            add("| own time (leaf frame) | % | inclusive (gateway and library frames) | % |")
            add("|---|---|---|---|")
            own, incl = spy["self"][:12], spy["inclusive"][:12]
            for i in range(max(len(own), len(incl))):
                a = own[i] if i < len(own) else ("", "")
                b = incl[i] if i < len(incl) else ("", "")
                add(f"| {'`' + a[0] + '`' if a[0] else ''} | {a[1]} | {'`' + b[0] + '`' if b[0] else ''} | {b[1]} |")
            add("")
        strace = profile.get("strace")
        if strace:
            add(f"System calls per message ({strace.get('gateway', {}).get('messages', '?')} messages, `strace -f -c` "
                "attached to the whole process tree; strace slows both systems down, only the counts matter):")
            add("")
            keys = ["fsync", "fdatasync", "openat", "rename", "renameat2", "unlink", "write", "writev", "read",
                    "sendto", "recvfrom", "epoll_wait", "futex"]
            add("| syscall | gateway per msg | Postfix per msg |")
            add("|---|---|---|")
            g, p = strace.get("gateway", {}), strace.get("postfix", {})
            for key in keys:
                gv = g.get("per_message", {}).get(key)
                pv = p.get("per_message", {}).get(key)
                if gv is None and pv is None:
                    continue
                add(f"| {key} | {gv if gv is not None else 0} | {pv if pv is not None else 0} |")
            add(f"| all syscalls | {g.get('total_per_message', '–')} | {p.get('total_per_message', '–')} |")
            add("")


def targets_report(bench: Bench, lines: list[str]) -> None:
    """The issue's targets, met or missed, with by how much."""
    add = lines.append
    results = bench.results
    add("## Targets")
    add("")
    add("| target | measured (median of per-round ratios) | verdict |")
    add("|---|---|---|")

    def ratio(variant: str, attr: str) -> float | None:
        values = [getattr(g, attr) / getattr(p, attr) for g, p in paired(results, variant) if getattr(p, attr)]
        return med(values) if values else None

    def verdict(value: float | None, goal: float, higher: bool) -> str:
        if value is None:
            return "not measured"
        if (value >= goal) if higher else (value <= goal):
            return "met"
        if higher:
            return f"**missed** by {(1 - value / goal) * 100:.0f}% (goal ≥ {goal:.2f}×)"
        return f"**missed** by {(value / goal - 1) * 100:.0f}% (goal ≤ {goal:.2f}×)"

    e2e = ratio("plain", "e2e_rate")
    add(f"| end-to-end throughput ≥ Postfix (plain) | {fmt_ratio(e2e)} | {verdict(e2e, 1.0, True)} |")
    acc = ratio("plain", "accept_rate")
    add(f"| (accept throughput, plain, for reference) | {fmt_ratio(acc)} | {verdict(acc, 1.0, True)} |")
    cpu = ratio("plain", "cpu_per_1000")
    add(f"| CPU per message ≤ Postfix (plain) | {fmt_ratio(cpu)} | {verdict(cpu, 1.0, False)} |")
    dk = ratio("dkim", "e2e_rate")
    add(f"| with DKIM RSA signing ≥ 0.9× Postfix plain (end-to-end) | {fmt_ratio(dk)} | {verdict(dk, 0.9, True)} |")
    dka = ratio("dkim", "accept_rate")
    add(f"| with DKIM RSA signing ≥ 0.9× Postfix plain (accept) | {fmt_ratio(dka)} | {verdict(dka, 0.9, True)} |")
    for variant, title in (("syncfs", "plain"), ("dkim-syncfs", "with DKIM")):
        goal = 1.0 if variant == "syncfs" else 0.9
        value = ratio(variant, "e2e_rate")
        if value is not None:
            add(f"| {title}, `spool_sync_method = \"syncfs\"`: end-to-end ≥ {goal:.1f}× Postfix plain | "
                f"{fmt_ratio(value)} | {verdict(value, goal, True)} |")
        cpu_value = ratio(variant, "cpu_per_1000")
        if variant == "syncfs" and cpu_value is not None:
            add(f"| plain, `spool_sync_method = \"syncfs\"`: CPU per message ≤ Postfix | {fmt_ratio(cpu_value)} | "
                f"{verdict(cpu_value, 1.0, False)} |")
    for variant in bench.args.variants:
        rss = [r.peak_memory_mb for r in results if r.variant == variant and r.system == "gateway" and not r.error]
        if rss:
            value = max(rss)
            add(f"| gateway RSS < 100 MB ({variant}, worst round) | {value:.1f} MB | "
                f"{'met' if value < 100 else f'**missed** by {value - 100:.0f} MB'} |")
    big = bench.extras.get("big_message", {}).get("gateway", {})
    if big.get("peak_mb"):
        value = big["peak_mb"]
        add(f"| gateway RSS < 100 MB with one {bench.args.big_message_mb} MB message (our own goal; the issue "
            f"asks for the peak to be reported) | {value:.1f} MB | "
            f"{'met' if value < 100 else f'**missed** by {value - 100:.0f} MB'} |")
    add("")


def analysis_report(bench: Bench, lines: list[str]) -> None:
    """Observations of this run that explain the misses (every number comes from this run)."""
    add = lines.append
    results = bench.results
    profile = bench.extras.get("profile") or {}
    spies = profile.get("py_spy") or {}
    strace = profile.get("strace") or {}

    def median_of(variant: str, system: str, attr: str) -> float | None:
        values = [getattr(r, attr) for r in results if r.variant == variant and r.system == system and not r.error]
        return med(values) if values else None

    add("## Why: what this run shows")
    add("")
    gw_cores, pf_cores = median_of("plain", "gateway", "cores_busy"), median_of("plain", "postfix", "cores_busy")
    gw_cpu, pf_cpu = median_of("plain", "gateway", "cpu_per_1000"), median_of("plain", "postfix", "cpu_per_1000")
    loop = median_of("plain", "gateway", "loop_thread_busy")
    gw_user, pf_user = median_of("plain", "gateway", "user_share"), median_of("plain", "postfix", "user_share")
    if gw_cores is not None and pf_cores is not None:
        add(f"* **One event loop.** The gateway kept {gw_cores:.2f} cores busy during the plain runs (Postfix "
            f"{pf_cores:.2f}, spread over its smtpd, cleanup, qmgr and smtp processes)"
            + (f"; its event-loop thread alone was busy {loop:.0%} of the time (its own CPU; time spent waiting for "
               "the GIL held by the spool threads comes on top)" if loop else "")
            + ". Every SMTP command of every session, in and out, and all Python work of the spool threads "
            "share that one thread and one GIL: a second core helps only with the kernel side of the I/O (and "
            "with OpenSSL's part of DKIM signing)."
            + (f" User time was {gw_user:.0%} of the gateway's CPU (Postfix {pf_user:.0%}); the rest is kernel "
               "time: fsync, file and socket system calls." if gw_user and pf_user else ""))
    sess = bench.extras.get("sessions")
    if sess:
        g = {r["sessions"]: r for r in sess["runs"] if r["system"] == "gateway" and not r["error"]}
        p = {r["sessions"]: r for r in sess["runs"] if r["system"] == "postfix" and not r["error"]}
        if 1 in g and 20 in g and 1 in p and 20 in p:
            gain = g[20]["e2e_rate"] / g[1]["e2e_rate"]
            add(f"* **{'Little gain from concurrency' if gain < 1.5 else 'Concurrency'}.** With one session the "
                f"gateway relayed {g[1]['e2e_rate']:.0f} msg/s, with 20 sessions {g[20]['e2e_rate']:.0f} msg/s "
                f"({gain:.1f}×); Postfix {p[1]['e2e_rate']:.0f} and {p[20]['e2e_rate']:.0f} msg/s. One session takes "
                f"{1000 / g[1]['e2e_rate']:.1f} ms per message through the gateway against "
                f"{1000 / p[1]['e2e_rate']:.1f} ms through Postfix"
                + (", and more sessions mostly queue on the same event loop" if gain < 1.5 else "")
                + (f" (its thread busy {g[1]['loop_thread_busy']:.0%} with one session, "
                   f"{g[20]['loop_thread_busy']:.0%} with 20)." if g[1].get("loop_thread_busy") else "."))
    wi = bench.extras.get("whatif")
    if wi:
        runs = {r["label"]: r for r in wi["runs"] if not r["error"]}
        base = [r["e2e_rate"] for k, r in runs.items() if k.startswith("as measured")]
        if base:
            b0 = med(base)
            noise = (max(base) - min(base)) / b0 if len(base) > 1 else 0.0
            parts = []
            for k, r in runs.items():
                if k.startswith("as measured"):
                    continue
                change = r["e2e_rate"] / b0 - 1
                parts.append(f"{k}: {r['e2e_rate']:.0f} msg/s ({change:+.0%}"
                             + (", within the noise" if abs(change) <= noise else "") + ")")
            add(f"* **What each cost is worth** (what-if runs, against {b0:.0f} msg/s as measured: "
                f"{' and '.join(format(x, '.0f') for x in base)} in two runs, a spread of {noise:.0%}): "
                + "; ".join(parts) + "."
                + (" On this shared machine single what-if runs are too noisy to rank the costs; run them again "
                   "on a quiet machine (`--extras whatif --small-messages 10000`)." if noise > 0.1 else ""))
    if gw_cpu is not None and pf_cpu is not None:
        per_round = [g.cpu_per_1000 / p.cpu_per_1000 for g, p in paired(results, "plain") if p.cpu_per_1000]
        add(f"* **CPU per message.** {gw_cpu:.2f} ms for the gateway against {pf_cpu:.2f} ms for Postfix "
            f"(medians; per round the gateway used {spread(per_round, '.2f')}× Postfix's CPU).")
    plain = spies.get("plain") or {}
    if plain.get("buckets"):
        top = ", ".join(f"{label} {pct}%" for label, pct in plain["buckets"][:6])
        add(f"  Where its GIL time goes (py-spy --gil, plain): {top}. No single function dominates; the "
            "largest identifiable costs, as shares of all GIL samples:")
        found = plain.get("patterns", {})
        for key, _required, text in PROFILE_PATTERNS:
            if key in ("dkim", "aiospamc_ssl"):
                continue
            if found.get(key, 0) >= 1.0:
                add(f"  * {found[key]}%: {text}")
    g, p = strace.get("gateway", {}).get("per_message", {}), strace.get("postfix", {}).get("per_message", {})
    if g and p:
        add(f"* **Durability I/O.** {g.get('fsync', 0) + g.get('fdatasync', 0):g} fsync per message for the gateway "
            f"against {p.get('fsync', 0) + p.get('fdatasync', 0):g} for Postfix (strace, default "
            "`spool_sync_method = \"fsync\"`). The gateway fsyncs each message's file and its envelope record "
            "(two files, where Postfix keeps one queue file); the directory fsyncs of the commit are shared by "
            "all messages committed together (group commit, up to two batches in flight), and removals after "
            "delivery are batched the same way. The thread hops that remain "
            f"({g.get('futex', 0):g} futex calls per message, Postfix {p.get('futex', 0):g}) come from those "
            f"batches going to {spool_pool_text()} and back; a freshly received message is handed to the relay "
            "worker in memory (committed straight into `active/`), so it needs no claim or re-read.")
    def commit_ms(variant: str) -> list[float]:
        values = [mean_metric(r.metrics, "gateway_spool_commit_duration_seconds") for r in results
                  if r.variant == variant and r.system == "gateway" and r.metrics]
        return [c * 1000 for c in values if c is not None]

    commit = commit_ms("plain")
    if commit:
        add(f"  Mean spool commit (its histogram, plain runs): {spread(commit, '.1f')} ms per message, from the "
            "end of DATA until the message is durable; each session waits that long for its 250, so with "
            "sessions that send one message after the other it bounds the throughput.")
    gw_syncfs = median_of("syncfs", "gateway", "e2e_rate")
    gw_plain = median_of("plain", "gateway", "e2e_rate")
    if gw_syncfs is not None and gw_plain is not None:
        fast = commit_ms("syncfs")
        add(f"* **fsync or syncfs.** With `spool_sync_method = \"syncfs\"` the gateway relayed {gw_syncfs:.0f} msg/s "
            f"end-to-end against {gw_plain:.0f} with the default (medians)"
            + (f"; its mean spool commit was {spread(fast, '.1f')} ms" if fast else "")
            + ". A batch of N messages then costs two `syncfs(2)` calls (two journal commits) instead of 2N file "
            "fsyncs plus the directory fsyncs, each of which on ext4 waits for a journal commit of its own. The "
            "price: syncfs also writes back whatever else is dirty on that file system, so it suits a spool on a "
            "file system of its own (README).")
    gw_dkim = median_of("dkim", "gateway", "cpu_per_1000")
    if gw_dkim is not None and gw_cpu is not None:
        line = (f"* **DKIM.** Signing changed the gateway's CPU per message by {gw_dkim - gw_cpu:+.2f} ms "
                f"(medians: {gw_dkim:.2f} ms with DKIM, {gw_cpu:.2f} ms plain). Signing runs in two threads of its "
                "own: OpenSSL's RSA step releases the GIL and can use the second core, but dkimpy's canonicalization "
                "and the header layout are Python and take GIL time from the event loop")
        dk = spies.get("dkim") or {}
        if dk.get("buckets"):
            share = dict(dk["buckets"]).get("DKIM signing")
            frames = [f"`{n}` {v}%" for n, v in dk.get("inclusive", []) if n.startswith(("gateway/dkim", "dkim/"))][:4]
            if share is not None:
                line += f"; py-spy puts {share}% of the GIL samples of the DKIM run in signing"
            if frames:
                line += " (" + ", ".join(frames) + ")"
        add(line + ".")
    gw_scan = median_of("scan", "gateway", "cpu_per_1000")
    if gw_scan is not None and gw_cpu is not None:
        sc = median_of("scan", "gateway", "scanner_cpu_per_1000")
        line = (f"* **Scanning.** With clamd + spamd the gateway itself used {gw_scan:.2f} ms of CPU per message "
                f"({gw_scan - gw_cpu:+.2f} ms against plain)" + (f"; the scanners used {sc:.2f} ms more" if sc else ""))
        scan = spies.get("scan") or {}
        hot = dict(scan.get("self", []))
        certs = hot.get("ssl.py:SSLContext.load_default_certs")
        if certs and certs >= 5:
            callers = [n for n, _ in scan.get("inclusive", []) if n.startswith(("policies/", "aiospamc/"))][:3]
            line += (f". {certs}% of the gateway's samples in the scan run (all threads) are in "
                     "`ssl.SSLContext.load_default_certs`" + (f" (under {', '.join(f'`{c}`' for c in callers)})" if callers else "")
                     + ": aiospamc's one-shot `aiospamc.symbols()` makes a `FrontendClientBuilder` per call, which "
                     "creates two `SSLContextBuilder`s, each running `ssl.create_default_context()` (parsing the "
                     "system CA bundle) even for plain TCP; this runs on the event loop thread, for every message, "
                     "and stalls every other session meanwhile")
        elif scan.get("self"):
            line += ". Hottest functions of the scan run (own time): " + ", ".join(
                f"`{n}` {v}%" for n, v in scan["self"][:5])
        add(line + ".")
    big = (bench.extras.get("big_message") or {})
    if big.get("gateway", {}).get("peak_mb") and big.get("gateway", {}).get("idle_mb") is not None:
        g_big = big["gateway"]
        size_mb = big["bytes"] / 2**20
        add(f"* **Large messages.** One {size_mb:.0f} MB message raised the gateway's RSS from {g_big['idle_mb']:.0f} "
            f"to {g_big['peak_mb']:.0f} MB, {(g_big['peak_mb'] - g_big['idle_mb']) / size_mb:.1f}× the message size: "
            "aiosmtpd collects the DATA lines as many small objects (which the allocator keeps afterwards) and "
            "joins them, and inserting the Received: header makes one more copy (the relay encodes DATA in 256 KB "
            "pieces and adds no whole copy). Streaming DATA into the spool file would need our own DATA phase in "
            "place of aiosmtpd's. Postfix streams it through its queue file"
            + (f" (peak {big['postfix']['peak_mb']:.0f} MB PSS for all its processes)." if big.get("postfix", {}).get("peak_mb") else "."))
    add("")


def spool_pool_text() -> str:
    try:
        import gateway.spool.threads as spool_io
        return f"the spool's own pool of {spool_io.SPOOL_THREADS} threads (`gateway/spool/threads.py`)"
    except (ImportError, AttributeError):
        return "the default thread pool (`asyncio.to_thread`)"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


# ---------------------------------------------------------------- main

def check_tools() -> None:
    missing = [str(p) for p in (SMTP_SOURCE, SMTP_SINK, POSTFIX, POSTCONF) if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `bash bench/install.sh` (Debian package postfix)")
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root: a private Postfix instance runs its daemons as user postfix")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=None, help="N per run (default 20000; --quick: 300)")
    parser.add_argument("--scan-messages", type=int, default=None,
                        help="N per run of the scan variant (default N/20: spamd is the bottleneck)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per variant (default 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--extras", default="sessions,whatif,big,outage,profile",
                        help="comma list of sessions, whatif, big, outage, profile ('' for none)")
    parser.add_argument("--small-messages", type=int, default=None,
                        help="N of the sessions and what-if runs (default N/8, at most 3000)")
    parser.add_argument("--big-message-mb", type=int, default=50)
    parser.add_argument("--outage-messages", type=int, default=None, help="default N/4, at most 5000")
    parser.add_argument("--profile-messages", type=int, default=None, help="default N/4, at most 5000")
    parser.add_argument("--spamd-children", type=int, default=4)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of idle after each start")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (300 messages, 1 round)")
    parser.add_argument("--output", default=None,
                        help="the Markdown report (default docs/benchmarks.md; --quick: bench/quick-report.md)")
    parser.add_argument("--json", default=None, help="raw results (default bench/last-run.json)")
    parser.add_argument("--workdir", default=None, help="where instances live (default a new /tmp/mailbench.*)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, spools)")
    parser.add_argument("--report-only", metavar="JSON", default=None,
                        help="only rewrite the report from the raw results of an earlier run (e.g. bench/last-run.json)")
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 300 if args.quick else 20000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.scan_messages is None:
        args.scan_messages = max(50, args.messages // 20)
    if args.outage_messages is None:
        args.outage_messages = min(5000, max(50, args.messages // 4))
    if args.small_messages is None:
        args.small_messages = min(3000, max(100, args.messages // 8))
    if args.profile_messages is None:
        args.profile_messages = min(5000, max(100, args.messages // 4))
    if args.quick:
        args.big_message_mb = min(args.big_message_mb, 50)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    args.extras = [e for e in args.extras.split(",") if e]
    if args.output is None:
        args.output = str(ROOT / ("bench/quick-report.md" if args.quick else "docs/benchmarks.md"))
    if args.json is None:
        args.json = str(ROOT / ("bench/quick-run.json" if args.quick else "bench/last-run.json"))
    return args


def report_only(args: argparse.Namespace) -> int:
    """Rewrite the report from a JSON of an earlier run (older profile summaries redone from its -profiles/ dir)."""
    data = json.loads(Path(args.report_only).read_text())
    saved = data.get("args", {})
    for key in ("messages", "scan_messages", "rounds", "variants", "extras", "spamd_children", "big_message_mb",
                "outage_messages", "profile_messages", "small_messages"):
        if key in saved:
            setattr(args, key, saved[key])
    bench = Bench.__new__(Bench)
    bench.args = args
    fields_ = {f for f in RunResult.__dataclass_fields__}
    bench.results = [RunResult(**{k: v for k, v in r.items() if k in fields_}) for r in data["runs"]]
    bench.extras = data.get("extras", {})
    spies = (bench.extras.get("profile") or {}).get("py_spy") or {}
    for name, spy in spies.items():
        # summaries made by an older bench/run.py lack newer fields: summarise the kept raw stacks again
        variant, _, kind = name.partition("-")
        gil = bool((spy.get("run") or {}).get("gil"))
        raw = profiles_dir(args.report_only) / f"{variant}{'-gil' if gil else '-all-threads'}.collapsed.txt"
        if "patterns" not in spy and raw.exists() and not spy.get("error"):
            spies[name] = summarise_py_spy(raw.read_text(errors="replace")) | {"run": spy.get("run", {})}
    info = data["machine"]
    global REPORT_ARGV, REPORT_TIME
    REPORT_ARGV = data.get("argv", [])
    REPORT_TIME = data.get("finished") or time.time()
    started = REPORT_TIME - 60 * (data.get("minutes") or 0)
    text = report(bench, info, started)
    Path(args.output).write_text(text)
    log(f"report rewritten from {args.report_only} to {args.output}")
    return 0


REPORT_ARGV: list[str] | None = None
REPORT_TIME: float | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args)
    check_tools()
    started = time.time()
    info = machine()
    bench = Bench(args)
    log(f"work directory {bench.workdir}; N={args.messages}, rounds={args.rounds}, variants={args.variants}, "
        f"extras={args.extras}")

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for variant in args.variants:
            bench.variant_rounds(variant)
        extras = {"sessions": bench.sessions, "whatif": bench.whatif, "big": bench.big_message,
                  "outage": bench.outage, "profile": bench.profile}
        for name, run_extra in extras.items():
            if name not in args.extras:
                continue
            try:
                run_extra()
            except Exception:  # a failed extra must not lose the rounds measured before it
                traceback.print_exc()
                bench.extras.setdefault("failed", []).append(name)
    finally:
        bench.close()
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": info, "args": {k: v for k, v in vars(args).items()},
                                           "argv": sys.argv[1:], "minutes": (time.time() - started) / 60,
                                           "finished": time.time(),
                                           "runs": [asdict(r) for r in bench.results], "extras": bench.extras},
                                          indent=1, default=str))
    text = report(bench, info, started)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    log(f"report written to {args.output}, raw results to {args.json}")
    print(text)
    return 1 if any(r.error for r in bench.results) else 0


if __name__ == "__main__":
    sys.exit(main())
