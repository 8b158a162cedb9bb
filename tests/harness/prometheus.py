"""A real Prometheus server (Debian package) on loopback scraping the gateway, for tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.harness.ports import free_port
from tests.harness.processes import terminate

BINARY = Path("/usr/bin/prometheus")


class PrometheusServer:
    """Prometheus scraping ``target`` (host:port) every ``interval_ms`` milliseconds; stopped by its own PID."""

    def __init__(self, target: str, interval_ms: int = 500) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="prometheus.", dir="/tmp"))
        self.port = free_port()
        (self.folder / "prometheus.yml").write_text(
            "global:\n"
            f"  scrape_interval: {interval_ms}ms\n"
            f"  evaluation_interval: {interval_ms}ms\n"
            "scrape_configs:\n"
            "  - job_name: gateway\n"
            f"    scrape_interval: {interval_ms}ms\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of its HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        """Start and wait until it is ready (``/-/ready``)."""
        log = open(self.folder / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                str(BINARY),
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("prometheus did not start:\n" + (self.folder / "prometheus.log").read_text())
            time.sleep(0.2)

    def query(self, expression: str) -> list[dict]:
        """Instant PromQL query; returns the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as answer:
            data = json.load(answer)
        assert data["status"] == "success", data
        return data["data"]["result"]

    def value(self, expression: str) -> float | None:
        """The single value of a query that yields one sample (None when empty)."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expression: str, expected: float, timeout: float = 30.0) -> None:
        """Wait until ``expression`` evaluates to ``expected`` (scrapes are periodic)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.value(expression)
            if last == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expression} = {last}, expected {expected}")

    def stop(self) -> None:
        """SIGTERM by PID, then remove its folder."""
        terminate(self.process, 20)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def available() -> bool:
    """True when the Debian prometheus binary is installed."""
    return BINARY.exists() and os.access(BINARY, os.X_OK)
