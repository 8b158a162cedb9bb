"""The queue commands (run as root) over a spool its owner may have tampered with.

Issue 18: the queue commands followed symbolic links and read FIFOs and
devices in the spool, and a deeply nested or garbage record could crash them.
Each is planted in a real spool here and ``gateway queue list`` / ``show`` run
as they do for an operator.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

from gateway.envelope import ClientInfo
from gateway.spool import QueueState, RecipientStatus, Spool, SpoolEntry, new_queue_id

SECRET = "root:$6$not-for-your-eyes"


def _queue(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "queue", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=30,
    )


def _commit(spool: Spool, sender: str) -> str:
    entry = SpoolEntry(
        queue_id=new_queue_id(),
        arrival=1_700_000_000.0,
        sender=sender,
        recipients=[RecipientStatus("b@example.org")],
        client=ClientInfo(address=ipaddress.ip_address("192.0.2.1"), port=1, listener="smtp"),
    )
    spool.commit(entry, b"Subject: kept\r\n\r\nbody\r\n", QueueState.DEFERRED)
    return entry.queue_id


def test_links_fifos_and_garbage_records_are_refused_not_followed(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\n")
    config = tmp_path / "gateway.toml"
    config.write_text(f'state_dir = "{tmp_path / "var"}"\n')
    spool = Spool(tmp_path / "var" / "spool")
    spool.create()
    good = _commit(spool, "good@example.com")
    linked_record = _commit(spool, "linked-record@example.com")
    linked_data = _commit(spool, "linked-data@example.com")
    fifo, nested, garbage = (new_queue_id() for _ in range(3))
    deferred = spool.state_dir(QueueState.DEFERRED)
    (deferred / f"{linked_record}.json").unlink()
    (deferred / f"{linked_record}.json").symlink_to(secret)
    spool.message_path(linked_data).unlink()
    spool.message_path(linked_data).symlink_to(secret)
    os.mkfifo(deferred / f"{fifo}.json")
    (deferred / f"{nested}.json").write_text("[" * 200_000 + "]" * 200_000)
    (deferred / f"{garbage}.json").write_bytes(b'{"format_version": 1, "queue_id": \xff\x00 "\x1b]0;x\x07"}')

    listing = _queue(config, "list")
    assert listing.returncode == 0, listing.stderr
    assert good in listing.stdout and "good@example.com" in listing.stdout
    assert SECRET not in listing.stdout + listing.stderr and "Traceback" not in listing.stderr
    assert "symbolic link" in listing.stderr  # said, not followed
    assert "\x1b" not in listing.stdout + listing.stderr

    shown = _queue(config, "show", good)
    assert shown.returncode == 0 and "Subject: kept" in shown.stdout
    for queue_id in (linked_record, linked_data, fifo, nested, garbage):
        done = _queue(config, "show", queue_id)
        assert done.returncode == 1, (queue_id, done.stdout, done.stderr)
        assert SECRET not in done.stdout + done.stderr and "Traceback" not in done.stderr
        assert "\x1b" not in done.stdout + done.stderr
    assert "is a symbolic link" in _queue(config, "show", linked_data).stderr
