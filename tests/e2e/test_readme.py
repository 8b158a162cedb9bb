"""The README's first-run steps, as written: `make run` on the embedded default config,
the README's smtplib snippet, and the message at a real sink with a Received: header."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.gateway_process import READY_LINE
from tests.harness.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]


def readme_client_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"python3 - <<'PY'\n(.*?)\nPY\n", text, re.S)
    assert match, "README.md lost its 'send your first message' snippet"
    return match.group(1)


def test_make_run_then_the_readme_snippet_delivers_to_the_relayhost(tmp_path):
    assert "make run" in (ROOT / "README.md").read_text() and "make test" in (ROOT / "README.md").read_text()
    with SmtpSink() as sink:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_RELAYHOST=f"[127.0.0.1]:{sink.port}", GATEWAY_STATE_DIR=str(tmp_path / "var"))
        log_path = tmp_path / "make-run.log"
        with open(log_path, "w") as log:
            make = subprocess.Popen(
                ["make", "--no-print-directory", "run"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while READY_LINE not in log_path.read_text():
                assert make.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            client = subprocess.run(
                [sys.executable, "-c", readme_client_snippet()], capture_output=True, text=True, timeout=30
            )
            assert client.returncode == 0, client.stderr
            (message,) = sink.wait_for_messages(1)
            # the sink has the message a moment before the worker logs its delivery
            deadline = time.monotonic() + 15
            while "status=sent" not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            os.killpg(make.pid, signal.SIGTERM)
            make.wait(20)
    assert message.mail_from == "me@example.com" and message.rcpt_tos == ["you@example.org"]
    assert message.data.startswith(b"Received: from ")
    assert b"with ESMTPS id" in message.data
    assert message.data.endswith(b"Subject: hi\r\n\r\nHello\r\n")
    assert "status=sent" in log_path.read_text()
