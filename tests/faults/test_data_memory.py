"""One message must not take the gateway's memory: DATA in about the message's size, and a shared budget.

Issue 18: 9 MB of empty lines from an untrusted client raised the gateway's
peak memory by about 730 MB (aiosmtpd kept an object per line, then the message
was joined and copied again). Peak memory is the kernel's high-water mark of
the real gateway process (``VmHWM`` in /proc/PID/status, reset through
``clear_refs`` before the message), over the whole way: DATA, spool commit and
delivery to the relayhost.
"""

from __future__ import annotations

import re
import smtplib
import time
from pathlib import Path

import pytest

from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import DataSession, http_get, relay_config

UNTRUSTED = "127.0.0.3"  # outside mynetworks: may only send to relay_domains (example.net)


def _memory(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(value) * 1024 for key, value in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB$", text, re.M)}


def _send(port: int, recipient: str, message: bytes, source: str = UNTRUSTED) -> None:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=60) as client:
        assert client.sendmail("a@example.org", [recipient], message) == {}


@pytest.fixture
def gateway(gateway_factory, sink):
    gw = gateway_factory(relay_config(sink.port, 'message_size_limit = "20M"\n'))
    with gw:
        _send(gw.port, "warm@example.net", b"Subject: warm up\r\n\r\nx\r\n")
        sink.wait_for_messages(1)
        yield gw


@pytest.mark.parametrize(
    "name, line, size", [("empty lines", b"\r\n", 9_000_000), ("78-character lines", b"x" * 76 + b"\r\n", 10_000_000)]
)
def test_one_message_raises_peak_memory_by_less_than_twice_its_size(gateway, sink, name, line, size):
    message = b"From: a@example.org\r\nSubject: big\r\n\r\n" + line * (size // len(line))
    pid = gateway.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the high-water mark starts again from now
    before = _memory(pid)["VmRSS"]
    _send(gateway.port, "big@example.net", message)
    gateway.wait_for_log(r"to=<big@example\.net>, .*status=sent", timeout=120)
    (delivered,) = sink.messages_for("big@example.net")
    assert delivered.data.endswith(message)
    increase = _memory(pid)["VmHWM"] - before
    assert increase < 2 * len(message), f"{name}: peak memory rose by {increase / len(message):.2f}x the message"


def _wait_for_data_memory(gateway: GatewayProcess, at_least: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        _, page = http_get(gateway.metrics_url + "/metrics")
        held = float(re.search(r"^gateway_smtp_data_memory_bytes (\S+)$", page, re.M).group(1))  # type: ignore[union-attr]
        if held >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"the gateway never held {at_least} bytes of DATA in memory")


def _data_memory(gateway: GatewayProcess) -> float:
    _, page = http_get(gateway.metrics_url + "/metrics")
    return float(re.search(r"^gateway_smtp_data_memory_bytes (\S+)$", page, re.M).group(1))  # type: ignore[union-attr]


def test_a_message_past_the_shared_budget_stays_in_its_file_and_is_accepted(gateway_factory, sink, tmp_path):
    # one process: with workers = N each worker holds 1/N of the budget (gateway.workers.role.worker_share)
    gw = gateway_factory(relay_config(sink.port, 'smtpd_data_memory_limit = "1M"\nworkers = 1\n'))
    with gw:
        body = b"Subject: half\r\n\r\n" + (b"y" * 98 + b"\r\n") * 6_000  # 600 kB: in memory while it arrives
        holder = DataSession(gw.port, "holder@example.net", UNTRUSTED, timeout=30)
        holder.sock.sendall(body)  # ... and held there while this client pauses
        _wait_for_data_memory(gw, len(body) - 100)
        second = body.replace(b"half", b"second")
        # does not fit beside the first: written to an unnamed spool file, checked and committed from there
        reply = DataSession(gw.port, "second@example.net", UNTRUSTED, timeout=30).finish(second)
        assert reply.startswith(b"250 2.0.0 "), reply
        assert _data_memory(gw) <= 1024 * 1024  # the budget was never exceeded
        assert holder.finish(b"")[:4] == b"250 "
        delivered = {m.rcpt_tos[0]: m.data for m in sink.wait_for_messages(2)}
        assert delivered["holder@example.net"].endswith(body)
        assert delivered["second@example.net"].endswith(second)


def test_budget_key_is_validated(tmp_path):
    gw = GatewayProcess(tmp_path / "gw", 'smtpd_data_memory_limit = "lots"\n')
    done = gw.cli("check-config", check=False)
    assert done.returncode == 2 and "smtpd_data_memory_limit" in done.stderr and "lots" in done.stderr
