"""Measuring processes: CPU of a process tree, memory (RSS, PSS, VmHWM), a memory sampler."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import psutil


def tree(root_pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def live_threads_cpu(pid: int) -> float:
    """CPU seconds of the live threads of one process from /proc/PID/task/*/schedstat (nanoseconds);
    0.0 when unreadable. Threads that have exited are not in it."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"{task.path}/schedstat", "rb") as handle:
                    total += int(handle.read().split()[0])
    except OSError:
        return 0.0
    return total / 1e9


def tree_cpu(root_pids: list[int]) -> float:
    """CPU seconds (user + system) of the trees: live processes plus the children they reaped.

    /proc/PID/stat counts in 10 ms ticks, truncated per process: a run through Postfix's dozens of
    processes, each busy a few ms, would lose up to 10 ms on each. So a live process counts the larger
    of its ticks (which include exited threads) and its live threads' schedstat time (nanoseconds).
    """
    total = 0.0
    for root_pid in root_pids:
        for process in tree(root_pid):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                own = max(times.user + times.system, live_threads_cpu(process.pid))
                total += own + times.children_user + times.children_system
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
