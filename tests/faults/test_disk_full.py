"""A full spool file system: 452 4.3.1 for new mail, accepted mail intact, recovery when space returns.

The spool (``state_dir/spool``) is a 2 MB tmpfs mounted for the test (root
only; the test is skipped with the reason when the mount is refused) and
filled with a file the test writes and later deletes.
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import (
    fill_filesystem,
    mount_tmpfs,
    still_serving,
    submit,
    unmount,
    wait_until,
)
from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink

SPOOL_SIZE = "2m"


def body(number: int, size: int) -> bytes:
    """A message of about ``size`` bytes, unique per ``number``."""
    line = f"line of message {number} ".ljust(70, "x").encode() + b"\r\n"
    return f"Subject: disk {number}\r\nMessage-ID: <disk{number}@faults.test>\r\n\r\n".encode() + line * (
        size // len(line)
    )


@pytest.fixture
def tmpfs_spool(gateway_factory, tmp_path: Path) -> Iterator[tuple[Path, list[GatewayProcess]]]:
    """(spool mount point for a gateway named "gw", list to register gateways to stop before unmount)."""
    spool = tmp_path / "gw" / "spool"
    why = mount_tmpfs(spool, SPOOL_SIZE)
    if why is not None:
        pytest.fail(f"cannot simulate a full disk: {why}")
    started: list[GatewayProcess] = []
    try:
        yield spool, started
    finally:
        for gateway in started:
            gateway.stop()  # it holds the spool lock file open: stop it before unmounting
        unmount(spool)


def queue_ids_on_disk(spool: Path) -> set[str]:
    return {path.stem for path in (spool / "data").iterdir()}


def mail_reply(port: int, size: int | None) -> tuple[int, bytes]:
    """The reply to MAIL FROM, with ``SIZE=size`` when given (RFC 1870)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.ehlo("client.test")
        return client.mail("sender@example.com", [f"SIZE={size}"] if size is not None else [])


def reply_to_data(port: int, recipient: str, message: bytes) -> tuple[tuple[int, bytes], int]:
    """(reply to the end of data, reply code to a NOOP afterwards on the same session)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.com")[0] == 250
        assert client.rcpt(recipient)[0] == 250
        reply = client.data(message)
        return reply, client.noop()[0]


@pytest.mark.parametrize("sync_method", ["fsync", "syncfs"])
def test_full_spool_gets_452_keeps_earlier_mail_and_recovers(gateway_factory, tmpfs_spool, sync_method):
    spool, started = tmpfs_spool
    sink = SmtpSink()  # down: accepted mail stays queued
    # Deferred mail is not retried during the test unless flushed (the retry on a full spool has its own test below).
    config = relay_config(
        sink.port, minimal_backoff_time='"1h"', maximal_backoff_time='"1h"', spool_sync_method=f'"{sync_method}"'
    )
    gateway = gateway_factory(config, name="gw")
    started.append(gateway)
    gateway.start()
    try:
        earlier = {}
        for number in range(3):
            queue_id = submit(
                gateway.port, "sender@example.com", [f"early{number}@elsewhere.org"], body(number, 100_000)
            )
            earlier[queue_id] = (f"early{number}@elsewhere.org", body(number, 100_000))
        for queue_id in earlier:
            gateway.wait_for_log(rf"{queue_id}: deferred, 1 recipient\(s\) left")

        filler = spool / "filler"
        assert fill_filesystem(filler) > 0

        # Not a byte free: refused at MAIL already, with or without SIZE= (Postfix smtpd_check_size).
        for size in (None, 100):
            assert mail_reply(gateway.port, size) == (452, b"4.3.1 Insufficient system storage"), size
        gateway.wait_for_log(r"NOQUEUE: reject: MAIL from .*452 4\.3\.1 Insufficient system storage")
        # 40 kB free: a 50 kB message without SIZE= passes MAIL and is refused when its commit finds no room;
        # announced with SIZE=, it is refused at MAIL.
        os.truncate(filler, os.path.getsize(filler) - 40_000)
        (code, text), after = reply_to_data(gateway.port, "late10@elsewhere.org", body(10, 50_000))
        assert (code, text) == (452, b"4.3.1 Insufficient system storage"), (code, text)
        assert after == 250  # the session goes on
        gateway.wait_for_log(
            r"result=tempfail \(452 4\.3\.1 Insufficient system storage\) reason=spool_full "
            r"detail=spool file system full"
        )
        assert mail_reply(gateway.port, 50_000) == (452, b"4.3.1 Insufficient system storage")
        still_serving(gateway.port)

        # Nothing accepted before is damaged, nothing half-written is left behind.
        assert queue_ids_on_disk(spool) == set(earlier)
        assert list((spool / "tmp").iterdir()) == []
        listing = gateway.cli("queue", "list").stdout
        assert all(queue_id in listing for queue_id in earlier), listing
        assert "-- " in listing and " in 3 Requests." in listing, listing

        # Space returns: new mail is accepted again.
        filler.unlink()
        late_id = submit(gateway.port, "sender@example.com", ["late12@elsewhere.org"], body(12, 50_000))
        gateway.wait_for_log(rf"{late_id}: deferred, 1 recipient\(s\) left")  # not in delivery during the flush

        # The relayhost comes up: everything, early and late, arrives once and byte-identical.
        sink.start()
        assert gateway.cli("queue", "flush").returncode == 0
        for queue_id in [*earlier, late_id]:
            gateway.wait_for_log(rf"{queue_id}: removed", timeout=30)
    finally:
        sink.stop()
    expected = {**{recipient: data for recipient, data in earlier.values()}, "late12@elsewhere.org": body(12, 50_000)}
    assert sink.delivered == {recipient: 1 for recipient in expected}
    for recipient, data in expected.items():
        (message,) = sink.messages_for(recipient)
        assert message.data.endswith(data)
    assert not sink.messages_for("late10@elsewhere.org")


def test_retry_during_full_spool_is_delivered_once_space_returns(gateway_factory, tmpfs_spool):
    spool, started = tmpfs_spool
    sink = SmtpSink()  # down while the disk is full
    gateway = gateway_factory(
        relay_config(sink.port, minimal_backoff_time='"1s"', maximal_backoff_time='"1s"'), name="gw"
    )
    started.append(gateway)
    gateway.start()
    try:
        queue_ids = [
            submit(gateway.port, "sender@example.com", [f"stuck{n}@elsewhere.org"], body(n, 20_000)) for n in range(3)
        ]
        for queue_id in queue_ids:
            gateway.wait_for_log(rf"{queue_id}: deferred, 1 recipient\(s\) left")
        filler = spool / "filler"
        fill_filesystem(filler)
        # Let every message have at least one more (failing) attempt while the spool is full.
        for queue_id in queue_ids:
            gateway.wait_for_log(rf"{queue_id}: to=<stuck\d@elsewhere\.org>, .*attempts=2, status=deferred", timeout=20)
            # ... and let that pass conclude before space returns: its deferral is either written
            # (a second "deferred" line) or fails on the full disk ("delivery pass failed").
            gateway.wait_for_log(
                rf"{queue_id}: (deferred, \d+ recipient\(s\) left|delivery pass failed)", timeout=10, count=2
            )
        filler.unlink()
        sink.start()
        # Space and the relayhost are back: each message must be delivered without a restart.
        wait_until(lambda: len(sink.messages) == 3, timeout=8, what="the three messages at the relayhost")
    finally:
        sink.stop()
    assert sink.delivered == {f"stuck{n}@elsewhere.org": 1 for n in range(3)}


def test_size_beyond_the_free_space_gets_452_at_mail_and_low_space_is_unhealthy(gateway_factory, tmpfs_spool):
    from tests.harness.helpers import http_get

    spool, started = tmpfs_spool
    gateway = gateway_factory(
        relay_config(SmtpSink().port, message_size_limit='"1M"', queue_minfree='"200k"'), name="gw"
    )
    started.append(gateway)
    gateway.start()
    status, text = http_get(gateway.metrics_url + "/readyz")
    assert status == 200 and "ok   spool: " in text, text
    assert mail_reply(gateway.port, 950_000)[0] == 250
    # leave about 1.1 MB: less than queue_minfree + message_size_limit (1.2 MB)
    filler = spool / "filler"
    fill_filesystem(filler)
    os.truncate(filler, os.path.getsize(filler) - 1_100_000)
    status, text = http_get(gateway.metrics_url + "/readyz")
    assert status == 503 and "FAIL spool: " in text and "less than queue_minfree plus message_size_limit" in text
    assert http_get(gateway.metrics_url + "/healthz")[0] == 200  # liveness: a restart frees no space
    assert gateway.cli("health", check=False).returncode == 1
    # SIZE= over half of what is free: refused at MAIL, not after the whole DATA; small mail still comes in
    assert mail_reply(gateway.port, 950_000) == (452, b"4.3.1 Insufficient system storage")
    assert mail_reply(gateway.port, 1000)[0] == 250
