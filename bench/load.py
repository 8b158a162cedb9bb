"""One load run: smtp-source against a system, timed, with its CPU and memory (RunResult)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from bench.common import BODY_BYTES, HOST, RECIPIENT, SENDER, SESSIONS, SMTP_SOURCE, wait_until
from bench.measure import MemorySampler, tree, tree_cpu
from bench.systems import GatewaySystem, Sink, System


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
    loop_thread_busy: float = 0.0  # gateway: CPU of its busiest main (event loop) thread / wall time
    user_share: float = 0.0  # user CPU / (user + system CPU)
    scanner_cpu_seconds: float = 0.0
    scanner_cpu_per_1000: float = 0.0
    scanner_peak_pss_mb: float = 0.0
    scanner_parts: dict[str, float] = field(default_factory=dict)  # daemon name → its CPU s per 1000 msg
    filtered: int = -1  # messages the content filter handled during the run (-1: not counted)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def smtp_source(
    port: int, messages: int, sessions: int, body_bytes: int, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    command = [
        str(SMTP_SOURCE),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(body_bytes),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"{HOST}:{port}",
    ]
    return subprocess.run(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout
    )


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


def main_thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of the main thread (the event loop) of ``pid`` and of each of its children
    (the workers of a supervisor): process id → seconds."""
    seconds: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        for member in [process, *process.children()]:
            with contextlib.suppress(psutil.Error):
                for thread in member.threads():
                    if thread.id == member.pid:
                        seconds[member.pid] = float(thread.user_time + thread.system_time)
    return seconds


def measure(
    system: System,
    sink: Sink,
    result: RunResult,
    *,
    body_bytes: int = BODY_BYTES,
    sessions: int = SESSIONS,
    sample_interval: float = 0.25,
    scanners: Callable[[], dict[str, int]] | None = None,
) -> RunResult:
    """Drive ``result.messages`` through ``system`` into ``sink``; fill in the figures.

    ``scanners``: name → root PID of the daemons whose CPU (seconds per 1000 messages, per daemon and
    summed) and peak PSS sum (MB) are measured apart from the system's own.
    """
    n = result.messages
    limit = 60 + n / 5 + body_bytes * n / 2e6  # generous: 5 msg/s, 2 MB/s
    scanner_pids = (lambda: list(scanners().values())) if scanners else None
    scanner_sampler = MemorySampler(scanner_pids, sample_interval) if scanner_pids else None
    parts0 = {name: tree_cpu([pid]) for name, pid in scanners().items()} if scanners else {}
    scanner_cpu0 = sum(parts0.values())
    cpu0 = tree_cpu(system.root_pids())
    split0 = cpu_split(system.root_pids())
    gateway_pid = system.root_pids()[0] if isinstance(system, GatewaySystem) else None
    loop0 = main_thread_cpu(gateway_pid) if gateway_pid else {}
    with MemorySampler(system.root_pids, sample_interval) as sampler, scanner_sampler or contextlib.nullcontext():
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
        loop1 = main_thread_cpu(gateway_pid) if gateway_pid else {}
    if scanners:
        parts1 = {name: tree_cpu([pid]) for name, pid in scanners().items()}
        result.scanner_parts = {name: (parts1[name] - parts0.get(name, 0.0)) * 1000 / n for name in parts1}
        result.scanner_cpu_seconds = sum(parts1.values()) - scanner_cpu0
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
        # the busiest event loop: with workers, the supervisor's own loop is idle
        busy = [loop1[pid] - loop0.get(pid, 0.0) for pid in loop1]
        result.loop_thread_busy = max(busy, default=0.0) / (result.e2e_seconds + result.drain_seconds)
    result.peak_memory_mb = system.peak_memory_kib(sampler) / 1024
    result.peak_pss_mb = sampler.peak_pss_kib / 1024
    result.peak_processes = sampler.peak_processes
    if isinstance(system, GatewaySystem):
        result.metrics = system.metrics()
    return result
