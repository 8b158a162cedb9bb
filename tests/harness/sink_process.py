"""The test SMTP sink in a process of its own, for tests whose timing the test process would disturb.

:class:`~tests.harness.smtp_sink.SmtpSink` normally runs in a thread of the test
process. Where a test measures what happens within a millisecond of the
relayhost's 250 (issue 17's crash test: did the gateway see the reply before it
was killed?), sharing the interpreter lock with the test's sending threads delays
the sink's replies by up to a few milliseconds and makes it a slow relayhost.
Here the same sink runs in a child process whose main thread only waits; each
message it accepts is appended to a JSON-lines file as
``{"message_id", "rcpt_tos", "accepted_at"}``, ``accepted_at`` being
``time.monotonic()`` right before the 250 (CLOCK_MONOTONIC: the same clock in
every process of the machine).

Run as ``python -m tests.harness.sink_process SETTINGS.json``; the settings give
``out`` (the JSON-lines file), ``port_file`` (written once listening) and
``rcpt_replies`` (address -> replies, as :attr:`SmtpSink.rcpt_replies`).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.harness.smtp_sink import ReceivedMessage, SmtpSink

MESSAGE_ID_RE = re.compile(rb"^Message-ID: <([^>]*)>\r?$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Accepted:
    """One message the sink process took: its Message-ID (without brackets), recipients, and when."""

    message_id: str
    rcpt_tos: list[str]
    accepted_at: float


class _RecordingSink(SmtpSink):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self._out = open(out, "a", encoding="ascii")  # noqa: SIM115 (closed at exit)

    def _record(self, message: ReceivedMessage) -> None:
        match = MESSAGE_ID_RE.search(message.data)
        line = {
            "message_id": match.group(1).decode("ascii", "replace") if match else "",
            "rcpt_tos": message.rcpt_tos,
            "accepted_at": message.accepted_at,
        }
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()


def main(settings_path: str) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait, in every thread
    settings = json.loads(Path(settings_path).read_text())
    sink = _RecordingSink(Path(settings["out"]))
    sink.rcpt_replies.update({address: list(replies) for address, replies in settings["rcpt_replies"].items()})
    sink.start()
    Path(settings["port_file"]).write_text(str(sink.port))
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    sink.stop()


class SinkProcess:
    """Starts and stops the sink process; reads what it accepted.

    Raises:
        RuntimeError: the process did not listen within 15 seconds.
    """

    def __init__(self, workdir: Path, rcpt_replies: dict[str, list[str]]) -> None:
        self.workdir = workdir
        self.out = workdir / "accepted.jsonl"
        self.port_file = workdir / "sink.port"
        self.settings = workdir / "sink.json"
        self.settings.write_text(
            json.dumps({"out": str(self.out), "port_file": str(self.port_file), "rcpt_replies": rcpt_replies})
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> SinkProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.sink_process", str(self.settings)],
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not self.port_file.exists() or not self.port_file.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError("the sink process did not start listening")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def count(self) -> int:
        """Messages accepted so far (lines written)."""
        try:
            with open(self.out, "rb") as handle:
                return handle.read().count(b"\n")
        except FileNotFoundError:
            return 0

    def accepted(self) -> list[Accepted]:
        """Every message accepted so far, in order."""
        try:
            text = self.out.read_text(encoding="ascii")
        except FileNotFoundError:
            return []
        return [Accepted(**json.loads(line)) for line in text.splitlines() if line]


if __name__ == "__main__":
    main(sys.argv[1])
