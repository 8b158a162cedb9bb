"""Draining a replica before it is removed: ``gateway drain [--to HOST:PORT]``, SIGUSR1, SIGTERM with ``drain_to``.

The process that holds the spool lock (a single gateway, or the supervisor)
drains in this order:

1. ``/readyz`` answers 503 ``draining`` so load balancers stop sending;
2. the listeners stop accepting; sessions without a transaction get
   ``421 4.3.2``, open transactions finish (``shutdown_timeout``);
3. deferred mail is flushed once and delivery goes on until nothing is left to
   try (``incoming/`` and ``active/`` empty) or ``drain_timeout`` seconds pass;
4. delivery stops; with a peer (``--to``, else ``drain_to``) everything still
   queued, deferred and held mail included, is handed to it over SMTP
   (:mod:`gateway.relay.handoff`), each message removed only after the peer's
   250 for all its recipients;
5. the result goes to ``state_dir/drain-result`` (JSON) and the process exits 0.

``gateway drain`` against a running gateway writes the peer to
``state_dir/drain-request``, sends SIGUSR1 to the PID in the spool's lock file,
waits for that process to exit and prints the result. With no gateway running
on the spool it takes the lock and hands the queue to the peer itself (the
volume of a replica already removed). Postfix has no such command: its
operators move queue files by hand (``postsuper -r``, MAILQ to another host).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import time
from pathlib import Path

from gateway.config import Config
from gateway.errors import ConfigError, SpoolError
from gateway.spool import QueueState, Spool, run_io
from gateway.values import NextHop, parse_next_hop

log = logging.getLogger("gateway.drain")

REQUEST_FILE = "drain-request"
RESULT_FILE = "drain-result"
POLL_INTERVAL = 0.2  # seconds between looks at the queue while delivery goes on
EXIT_POLL = 0.2  # seconds between looks at the draining process


def parse_peer(key: str, text: str) -> NextHop:
    """``[host]:port`` or ``host:port`` as a next hop (the ``relayhost`` forms).

    Raises:
        ConfigError: naming ``key`` (``drain_to`` or ``--to``) for anything else.
    """
    try:
        return parse_next_hop(text)
    except ValueError:
        raise ConfigError(key, text, "[host]:port or host:port, e.g. [10.0.0.7]:25") from None


def write_request(state_dir: Path, peer: NextHop | None) -> None:
    """Leave ``peer`` (None: the config's ``drain_to``) for the running gateway to read at SIGUSR1."""
    path = state_dir / REQUEST_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"to": str(peer) if peer is not None else None}))
    os.replace(tmp, path)


def take_request(state_dir: Path, default: NextHop | None) -> NextHop | None:
    """The peer ``gateway drain`` asked for (the request file is removed), else ``default``."""
    path = state_dir / REQUEST_FILE
    try:
        wanted = json.loads(path.read_text()).get("to")
        path.unlink()
    except (OSError, ValueError, AttributeError):
        return default
    if not wanted:
        return default
    try:
        return parse_next_hop(str(wanted))
    except ValueError:
        log.error("drain request names %r, not a next hop; using drain_to", wanted)
        return default


def drain_requested(config: Config) -> NextHop | None:
    """At SIGUSR1 (or SIGTERM with ``drain_to``): the peer to hand the queue to (:func:`take_request`), logged."""
    target = take_request(config.state_dir, config.drain_to)
    log.info("drain requested: hand-off to %s after up to %gs of delivery", target or "nobody", config.drain_timeout)
    return target


async def deliver_until_idle(spool: Spool, timeout: float) -> bool:
    """Flush deferred mail once, then wait until nothing is queued for delivery; False at ``timeout`` seconds."""
    from gateway.ops.queue_admin import flush

    flushed = await run_io(flush, spool)
    log.info("draining: %d deferred messages flushed; delivering for up to %gs", len(flushed), timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = await run_io(lambda: spool.ids(QueueState.INCOMING) or spool.ids(QueueState.ACTIVE))
        if not busy:
            return True
        await asyncio.sleep(POLL_INTERVAL)
    return False


async def hand_off_spool(config: Config, spool: Spool, peer: NextHop | None) -> dict[str, object]:
    """Requeue ``active/``, hand everything to ``peer`` and write ``state_dir/drain-result``; the result dict.

    The caller holds the spool lock and has stopped delivery.
    """
    await run_io(spool.recover)
    # the relay client and the hand-off: loaded only to drain
    from gateway.relay.handoff import HandoffReport, hand_off, queued_ids

    if peer is None:
        result = HandoffReport(left=queued_ids(spool, "no peer (drain_to)")).to_dict()
    else:
        from gateway.relay.client import ConnectionCache, SmtpClient
        from gateway.relay.routing import Router
        from gateway.resolver import LazyResolver
        from gateway.tls.context import client_context

        client = SmtpClient(
            config,
            client_context(
                config.smtp_tls_security_level,
                config.smtp_tls_CAfile,
                config.smtp_tls_cert_file,
                config.smtp_tls_key_file,
            ),
            ConnectionCache(config.smtp_connection_cache_time_limit),
        )
        try:
            report = await hand_off(spool, Router(config, LazyResolver(config)), client, peer)
        finally:
            await client.cache.close()
        result = report.to_dict()
    result["to"] = str(peer) if peer is not None else None
    remaining = result["left"]
    assert isinstance(remaining, dict)
    log.info(
        "drain done: %s messages handed to %s, %d left in %s",
        result["handed"],
        peer or "nobody",
        len(remaining),
        spool.root,
    )
    (config.state_dir / RESULT_FILE).write_text(json.dumps(result))
    return result


def drain_command(config: Config, peer: NextHop | None, wait: float) -> int:
    """``gateway drain``: have the running gateway drain (or drain a stopped spool here); the exit status.

    0 when the spool ended empty, 1 when messages are left (listed), 2 when no peer is
    known for a spool no gateway runs on, or the gateway did not end within ``wait`` seconds.
    """
    spool = Spool(config.spool_dir, config.spool_sync_method)
    if not (config.spool_dir / "lock").exists():
        print(f"no spool at {config.spool_dir}")
        return 2
    try:
        spool.lock()
    except SpoolError:
        return _ask_running_gateway(config, peer, wait)
    try:
        target = peer or config.drain_to
        if target is None:
            print("no gateway runs on this spool and no peer is named: give --to HOST:PORT or set drain_to")
            return 2
        (config.state_dir / RESULT_FILE).unlink(missing_ok=True)
        result = asyncio.run(hand_off_spool(config, spool, target))
    finally:
        spool.unlock()
    return _print_result(result)


def _ask_running_gateway(config: Config, peer: NextHop | None, wait: float) -> int:
    try:
        pid = int((config.spool_dir / "lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        print(f"the spool {config.spool_dir} is locked but its lock file names no process")
        return 2
    result_path = config.state_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    write_request(config.state_dir, peer)
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as error:
        print(f"cannot signal gateway pid {pid}: {error.strerror}")
        return 2
    print(f"gateway pid {pid} is draining (to {peer or config.drain_to or 'nobody'}); waiting up to {wait:g}s")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _lock_released(config.spool_dir / "lock"):  # the spool is let go as the very last step
            break
        time.sleep(EXIT_POLL)
    else:
        print(f"gateway pid {pid} still running after {wait:g}s")
        return 2
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        print(f"gateway pid {pid} exited without a drain result (see its log)")
        return 2
    return _print_result(result)


def _lock_released(path: Path) -> bool:
    """True when nobody holds the spool lock (tested with a lock of our own, let go at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _print_result(result: dict[str, object]) -> int:
    left = result.get("left") or {}
    assert isinstance(left, dict)
    print(f"handed off: {result.get('handed', 0)} messages to {result.get('to') or 'nobody'}; left: {len(left)}")
    for queue_id, why in sorted(left.items()):
        print(f"  {queue_id}: {why}")
    return 0 if not left else 1
