"""Shared bits of the benchmark: paths of the tools, the workload's constants, small process helpers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


sys.path.insert(0, str(ROOT))


SMTP_SOURCE = Path("/usr/sbin/smtp-source")


SMTP_SINK = Path("/usr/sbin/smtp-sink")


POSTFIX = Path("/usr/sbin/postfix")


POSTCONF = Path("/usr/sbin/postconf")


SCRIPT = shutil.which("script") or "/usr/bin/script"  # util-linux: postfix only talks on a tty


SENDER = "loadgen@bench.example"  # smtp-source puts it in From: too, so the gateway DKIM-signs it


RECIPIENT = "user@dest.example"


VARIANTS = ("plain", "dkim", "scan", "amavis", "rspamd", "syncfs", "dkim-syncfs", "asyncio", "one-worker")


# scan is left out by default: amavis runs the same gateway against a real yardstick
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "scan")


FILTER_VARIANTS = ("amavis", "rspamd")  # Postfix runs with a content filter of its own


SCAN_VARIANTS = ("scan", *FILTER_VARIANTS)  # few messages: the scanners are slow


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


def stop_pid(
    process: subprocess.Popen[Any] | None, timeout: float = 30.0, stop_signal: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``stop_signal`` to one process we started, wait (bounded, seconds), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
