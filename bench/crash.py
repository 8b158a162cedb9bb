"""The crash extra: deliveries repeated after SIGKILL, the gateway and Postfix side by side (issue 17).

Issue 17's harness, against both systems with the same load in the same run:
8 sessions send 1,500 messages (every other one to two recipients; one smtplib
session per message, a fresh Message-ID per attempt) while the relayhost
tempfails 30 % of the recipients once or twice, and the system is SIGKILLed 6
times while its queue drains (each kill when the relayhost has taken a random
share of the planned transactions, plus 20-200 ms), then restarted. Every
process of the system is SIGKILLed at the same instant, as `docker kill` kills a
container: the gateway's supervisor and workers, Postfix's whole process group
(master, qmgr, smtpd, smtp, cleanup, ...). Both relay
with their default destination concurrency (20) and 1 s retry timers
(minimal/maximal backoff 1 s/2 s, queue run delay 1 s), so deferred mail comes
back within the run. The relayhost is the test sink in a process of its own
(:mod:`tests.harness.sink_process`); rounds alternate which system goes first
and share their seed (the tempfails and the kill schedule).

Counted per run: messages acknowledged, deliveries lost (must be none), and
every copy too many at the relayhost, charged to the kill it came with
(:func:`tests.harness.crash_load.repeats_per_kill`), also those the relayhost
took after the kill (the system had sent the end of data and died before the
reply).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.common import log, port_open, wait_until
from bench.runs import Bench, failure
from bench.systems import GatewaySystem, PostfixSystem, System
from tests.harness.crash_load import Sender, deliveries, repeats_per_kill, tempfail_schedule
from tests.harness.sink_process import SinkProcess

SESSIONS = 8
MESSAGES = 1500
KILLS = 6
TEMPFAIL_SHARE = 0.3
SENDER_DEADLINE = 300.0  # seconds for a sender thread, whatever happens
GATEWAY_TIMERS = 'minimal_backoff_time = "1s"\nmaximal_backoff_time = "2s"\nqueue_run_delay = "1s"\n'
POSTFIX_TIMERS = {"minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s"}


def crash_extra(bench: Bench) -> None:
    """``bench.args.rounds`` rounds (at least 2), each a gateway run and a Postfix run with one seed, into
    ``bench.extras["crash"]``."""
    quick = bool(getattr(bench.args, "quick", False))
    messages, kills = (400, 3) if quick else (MESSAGES, KILLS)
    rounds = max(2, bench.args.rounds)
    log(f"crash: {messages} messages over {SESSIONS} sessions, {kills} SIGKILLs per run, {rounds} rounds")
    runs: list[dict[str, Any]] = []
    for round_no in range(1, rounds + 1):
        seed = random.SystemRandom().randrange(1 << 32)
        order = ("gateway", "postfix") if round_no % 2 else ("postfix", "gateway")
        for kind in order:
            try:
                run = crash_run(bench, kind, round_no, seed, messages, kills)
            except Exception as error:  # one failed run must not lose the others
                run = {"system": kind, "round": round_no, "seed": seed, "error": failure(error)}
            log(
                f"  round {round_no} {kind:8}: "
                + (
                    f"{run['repeats']} repeated in {run['kills']} kills ({run['while_down']} taken while down), "
                    f"{run['lost']} lost, {run['acknowledged']} acknowledged"
                    if "repeats" in run
                    else f"ERROR: {run['error']}"
                )
            )
            runs.append(run)
    bench.extras["crash"] = {"messages": messages, "sessions": SESSIONS, "kills": kills, "runs": runs}


def crash_run(bench: Bench, kind: str, round_no: int, seed: int, messages: int, kills: int) -> dict[str, Any]:
    """One run of ``kind`` ("gateway" or "postfix"); returns its counts.

    Raises:
        RuntimeError: the system did not start or restart; AssertionError: a wait ran out.
    """
    rng = random.Random(seed)
    per_sender = messages // SESSIONS
    tempfails = tempfail_schedule(rng, SESSIONS, per_sender, TEMPFAIL_SHARE)
    total = per_sender * SESSIONS
    targets = sorted(rng.sample(range(total // 10, total * 85 // 100), kills))
    delays = [rng.uniform(0.02, 0.2) for _ in range(kills)]
    downtimes = [rng.uniform(0.0, 0.3) for _ in range(kills)]
    workdir = bench.fresh_dir(f"crash-{kind}-r{round_no}")
    started = time.monotonic()
    down: list[tuple[float, float]] = []
    with SinkProcess(workdir, tempfails) as sink:
        system = bench.make_system(
            kind, "plain", sink.port, workdir, gateway_extra=GATEWAY_TIMERS, postfix_extra=POSTFIX_TIMERS
        )
        system.start()
        stop = threading.Event()
        senders = [Sender(index, system.port, stop, per_sender, SENDER_DEADLINE) for index in range(SESSIONS)]
        try:
            for sender in senders:
                sender.start()
            for target, delay, downtime in zip(targets, delays, downtimes, strict=True):
                _wait(
                    lambda t=target: sink.count() >= t or not any(s.is_alive() for s in senders),  # type: ignore[misc]
                    120,
                    lambda t=target: f"{t} transactions at the relayhost",  # type: ignore[misc]
                )
                time.sleep(delay)
                killed_at = time.monotonic()
                _kill(system)
                time.sleep(downtime)
                _restart(system)
                # a restarted gateway's log has "ready" already: wait for its listener
                _wait(lambda: port_open(system.port), 60, lambda: f"{kind} listening again")
                down.append((killed_at, time.monotonic()))
            for sender in senders:
                sender.join(SENDER_DEADLINE + 10)
            acked = {tag: sent for sender in senders for tag, sent in sender.acked.items()}
            wanted = {(tag, recipient) for tag, (_, recipients) in acked.items() for recipient in recipients}
            _wait(
                lambda: wanted <= set(deliveries(sink.accepted())),
                180,
                lambda: f"{len(wanted - set(deliveries(sink.accepted())))} acknowledged deliveries missing",
            )
            _wait_quiet(sink, 3.0, 60)  # later copies, e.g. a deferred recipient delivered again, count too
        finally:
            stop.set()
            system.stop()
        accepted = sink.accepted()
    counts = deliveries(accepted)
    per_kill, while_down, repeated = repeats_per_kill(accepted, counts, down)
    return {
        "system": kind,
        "round": round_no,
        "seed": seed,
        "kills": kills,
        "acknowledged": len(acked),
        "recipients": len(wanted),
        "lost": sum(1 for pair in wanted if counts[pair] == 0),
        "repeats": sum(per_kill.values()),
        "while_down": while_down,
        "per_kill": {str(k): v for k, v in sorted(per_kill.items())},
        "seconds": round(time.monotonic() - started, 1),
        "examples": [
            f"{tag} to {recipient} (queue ID {acked[tag][0] if tag in acked else '?'}): {how}"
            for (tag, recipient), how in list(repeated.items())[:10]
        ],
        "error": "",
    }


def _wait(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """:func:`bench.common.wait_until` every 10 ms; AssertionError naming ``what()`` if it never held."""
    if not wait_until(condition, timeout, 0.01):
        raise AssertionError(f"crash run: waited {timeout:.0f} s in vain for: {what()}")


def _wait_quiet(sink: SinkProcess, quiet: float, timeout: float) -> None:
    """Until the relayhost has taken nothing new for ``quiet`` seconds (``system.queued()`` cannot tell:
    Postfix leaves a killed session's empty, unacknowledged queue file in incoming/ for a while)."""
    deadline = time.monotonic() + timeout
    seen, since = sink.count(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"crash run: the relayhost still took mail after {timeout:.0f} s")
        time.sleep(0.2)
        if (now := sink.count()) != seen:
            seen, since = now, time.monotonic()


def _restart(system: System) -> None:
    """Start ``system`` again after :func:`_kill`.

    Postfix's start runs postsuper, which warns about a killed cleanup's temporary file in incoming/ and,
    with postlogd killed, writes that warning to ``maillog_file`` itself, as the postfix user: the file
    (root's, made by postlogd) is handed to that user first, or the start fails its integrity check.
    """
    if isinstance(system, PostfixSystem) and system.log_path.exists():
        shutil.chown(system.log_path, "postfix")
    system.start()


def _kill(system: System) -> None:
    """SIGKILL every process of the system at once and wait until every one of its processes is gone (10 s at most)."""
    if isinstance(system, GatewaySystem):
        assert system.process is not None
        root = system.process.pid
    else:
        assert isinstance(system, PostfixSystem)
        master = system.master_pid()
        assert master is not None, "Postfix is not running"
        root = master
    processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    group = os.getpgid(root)
    if isinstance(system, PostfixSystem) and group == root and group != os.getpgrp():
        os.killpg(group, signal.SIGKILL)  # master leads its own group: all of our instance at once
    else:
        # The gateway's workers would die with their supervisor (PR_SET_PDEATHSIG), but only once the
        # kernel has torn the supervisor down, milliseconds in which they go on relaying: all at once, as
        # `docker kill` does to a container (PID 1 gone, the kernel kills the whole PID namespace).
        for process in processes:  # our instance's processes, by PID
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)
    if isinstance(system, GatewaySystem) and system.process is not None:
        system.process.wait(10)


def crash_report(extras: dict[str, Any], lines: list[str]) -> None:
    """The report's section of the crash extra (nothing when it did not run)."""
    crash = extras.get("crash")
    if not crash:
        return
    add = lines.append
    add(f"## Deliveries repeated after SIGKILL ({crash['messages']} messages, {crash['kills']} kills per run)")
    add("")
    add(
        f"Issue 17's harness against both systems (bench/crash.py): {crash['sessions']} smtplib sessions, the "
        "relayhost tempfailing 30 % of the recipients once or twice, SIGKILL while the queue drains, restart; "
        "default destination concurrency (20), 1 s retry timers. Every copy too many at the relayhost counts, "
        "also those it took after the kill (in brackets: the system had sent the end of data and died before "
        "the reply). Nothing acknowledged may be lost."
    )
    add("")
    add("| round | system | acknowledged | repeated (after the kill) | per kill | lost | seconds |")
    add("|---|---|---|---|---|---|---|")
    for r in crash["runs"]:
        if r.get("error"):
            add(f"| {r['round']} | {r['system']} | – | – | – | – | ERROR: {r['error']} |")
            continue
        add(
            f"| {r['round']} | {r['system']} | {r['acknowledged']} | {r['repeats']} ({r['while_down']}) | "
            f"{r['repeats'] / r['kills']:.2f} | {r['lost']} | {r['seconds']} |"
        )
    add("")
    totals = {}
    for kind in ("gateway", "postfix"):
        done = [r for r in crash["runs"] if r["system"] == kind and not r.get("error")]
        kills = sum(r["kills"] for r in done)
        totals[kind] = (sum(r["repeats"] for r in done), kills, [r["repeats"] / r["kills"] for r in done])
    if all(kills for _, kills, _ in totals.values()):
        (g, gk, gr), (p, pk, pr) = totals["gateway"], totals["postfix"]
        ratio = f"{(g / gk) / (p / pk):.2f}" if p else "–"
        add(
            f"In all: the gateway {g} repeated deliveries in {gk} kills ({g / gk:.2f} per kill, median per run "
            f"{statistics.median(gr):.2f}), Postfix {p} in {pk} ({p / pk:.2f} per kill, median per run "
            f"{statistics.median(pr):.2f}); gateway per kill / Postfix per kill: {ratio}."
        )
        add("")
