"""Run the real gateway as a subprocess from a TOML config string (maddy tests/t.go style).

Readiness comes from the ``gateway ready`` log line, never from a sleep. The
process's log is collected in a thread so tests can wait for and grep lines;
``kill()`` sends SIGKILL to simulate a crash, ``stop()`` SIGTERM then SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

READY_LINE = "gateway ready"


class GatewayProcess:
    """One ``gateway run`` subprocess.

    Args:
        state_dir: where the config file, spool and TLS material go.
        config_text: the TOML configuration (``state_dir`` is set for you).
        env: extra environment variables.
        wrapper: argv put before the gateway's own (e.g. ``["ip", "netns", "exec", NAME]``).

    ``default_workers`` adds ``workers = N`` to every config that does not set
    ``workers`` itself: 1 (one process; the gateway's own default is one worker
    per CPU) unless ``pytest --gateway-workers N`` or the fault tests' second
    run (tests/faults/conftest.py) set it.
    """

    default_workers: int = 1

    def __init__(
        self, state_dir: Path, config_text: str, env: dict[str, str] | None = None, wrapper: list[str] | None = None
    ) -> None:
        self.wrapper = list(wrapper or [])
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.state_dir / "gateway.toml"
        metrics = "" if "metrics_listen" in config_text else 'metrics_listen = "127.0.0.1:0"\n'
        workers = ""
        if not re.search(r"^workers\s*=", config_text, re.M):
            workers = f"workers = {self.default_workers}\n"
        self.config_path.write_text(f'state_dir = "{self.state_dir}"\n' + metrics + workers + config_text)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update(env or {})
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def ca_file(self) -> Path:
        """The generated local CA certificate (exists once the gateway started with TLS)."""
        return self.state_dir / "tls" / "ca.crt"

    def command(self, *args: str) -> list[str]:
        """The argv to run the gateway CLI with this config."""
        return [*self.wrapper, sys.executable, "-m", "gateway", "--config", str(self.config_path), *args]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a CLI subcommand (``queue list`` ...) with this config."""
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, env=self.env, timeout=60, check=check
        )

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        """Start and wait for readiness; raises AssertionError with the log on failure."""
        self.lines = []
        self.process = subprocess.Popen(
            self.command("run"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        try:
            self.wait_for_log(READY_LINE, timeout)
        except AssertionError:
            self.kill()
            raise
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def log_text(self) -> str:
        """Everything the process logged so far."""
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> list[str]:
        """Wait until ``count`` log lines match the regex ``pattern``; returns them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if left <= 0 or exited:
                    raise AssertionError(
                        f"no {count} log line(s) matching {pattern!r} "
                        f"(process {'exited' if exited else 'running'}); log:\n" + "\n".join(self.lines[-80:])
                    )
                self._cond.wait(min(left, 0.2))

    @property
    def metrics_url(self) -> str:
        """Base URL of the metrics/health listener, read from the start-up log line."""
        line = self.wait_for_log(r"metrics and health on http://")[-1]
        return re.search(r"(http://[^/ ]+)/metrics", line).group(1)  # type: ignore[union-attr]

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once its log is read to the end (at most 5 s more)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            if self._reader is not None:  # every line it wrote before it died is in self.lines
                self._reader.join(5)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if needed; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return self.process.returncode

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
