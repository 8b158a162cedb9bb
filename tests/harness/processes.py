"""Peer daemons the tests start: stopped by their own PID, never by name (other programs run these daemons too)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Self


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM ``process`` if it still runs, wait up to ``timeout`` seconds, then SIGKILL it and wait again."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class FolderDaemon:
    """A peer daemon that lives in a temporary folder of its own, with a log file there.

    ``with Daemon(...) as daemon:`` starts it; leaving the block stops it (the
    subclass's ``stop``, by PID) and removes the folder.
    """

    folder: Path
    log_path: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_text(self) -> str:
        """The daemon's log so far ("" before it wrote one)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
