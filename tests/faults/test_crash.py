"""SIGKILL of the gateway while the queue drains: nothing acknowledged is lost, and few deliveries repeat.

4 sessions send 360 messages (every other one to two recipients) while the
relayhost tempfails 30 % of the recipients once or twice, so the queue holds
fresh, deferred and partly delivered messages (one recipient done, the other
deferred); the relay makes up to 5 deliveries at a time
(``default_destination_concurrency_limit``). At issue 17's load (8 sessions, the
default 20) the average holds too, about 0.7 per kill, but single runs swing too
far to assert on, this machine's two cores being shared by the senders, the
relayhost and the gateway (docs/benchmarks.md, "Issue 17"). The gateway is
SIGKILLed ``KILL_CYCLES`` times while the relayhost receives (each kill when it
has taken a random share of the planned transactions, plus a random delay), and
restarted each time. The relayhost is the test sink in a process of its own
(:mod:`tests.harness.sink_process`): in a thread of this process, next to the
sending threads, its 250s came up to milliseconds late, which is not what a
relayhost does.

Asserted:

* every recipient of every message that got our 250 receives it (a loss fails);
* issue 17: a recipient is marked done the moment the relayhost's 250 arrives,
  so only a delivery in flight at the kill can be repeated: per kill, at most
  the deliveries the gateway may have in flight (5 transactions, two
  recipients each at most);
* and, over the test, at most one repeated delivery per kill on average (Postfix
  in the issue's harness: 28 in 30 kills). Every copy too many counts, also one
  the relayhost took only after the kill (the gateway had sent the end of data
  and died before the reply: no spool can prevent those; they are printed apart).

The seed of the kill schedule and of the tempfails is printed (``FAULTS_SEED=<n>``
reproduces it), and so is each repeated delivery: when the relayhost took its
first copy against the kill, and its queue ID's relay log lines.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

from tests.faults.helpers import wait_until
from tests.harness.crash_load import Sender, deliveries, recipients_of, repeats_per_kill, tempfail_schedule
from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import relay_config
from tests.harness.sink_process import SinkProcess

SENDERS = 4  # concurrent sessions
MESSAGES_PER_SENDER = 90
KILL_CYCLES = 20
CONCURRENCY = 5  # default_destination_concurrency_limit (default 20): the transactions in flight at a kill
TEMPFAIL_SHARE = 0.3  # of the recipients: refused with 451 once (or twice) before they are taken
SENDER_DEADLINE = 90.0  # seconds for a sender thread, whatever happens


def test_sigkill_while_the_queue_drains_loses_nothing_and_repeats_little(gateway_factory, tmp_path, fault_workers):
    seed = int(os.environ.get("FAULTS_SEED", random.SystemRandom().randrange(1 << 32)))
    rng = random.Random(seed)
    print(f"kill schedule seed: FAULTS_SEED={seed}")
    planned = [r for s in range(SENDERS) for n in range(MESSAGES_PER_SENDER) for r in recipients_of(s, n)]
    tempfails = tempfail_schedule(rng, SENDERS, MESSAGES_PER_SENDER, TEMPFAIL_SHARE)
    # Kill when the relayhost has taken this many transactions (spread over the drain), plus a random
    # delay that makes the kill land at any moment of a delivery, not right after the relayhost took one.
    total = SENDERS * MESSAGES_PER_SENDER
    targets = sorted(rng.sample(range(total // 10, total * 85 // 100), KILL_CYCLES))
    delays = [rng.uniform(0.02, 0.2) for _ in range(KILL_CYCLES)]
    downtimes = [rng.uniform(0.0, 0.3) for _ in range(KILL_CYCLES)]
    print(f"{len(planned)} recipients, {len(tempfails)} tempfailed; kill after transactions {targets}")

    with SinkProcess(tmp_path, tempfails) as sink:
        gateway: GatewayProcess = gateway_factory(
            relay_config(sink.port, f"default_destination_concurrency_limit = {CONCURRENCY}\n")
        )
        gateway.start()
        logs: list[str] = []
        down: list[tuple[float, float]] = []  # time.monotonic() of each SIGKILL and of the restart after it
        stop = threading.Event()
        senders = [Sender(index, gateway.port, stop, MESSAGES_PER_SENDER, SENDER_DEADLINE) for index in range(SENDERS)]
        for sender in senders:
            sender.start()
        try:
            for cycle in range(KILL_CYCLES):
                target = targets[cycle]
                wait_until(
                    lambda target=target: (
                        sink.count() >= target  # type: ignore[misc]
                        or not any(s.is_alive() for s in senders)
                        and "Mail queue is empty" in gateway.cli("queue", "list").stdout
                    ),
                    timeout=60,
                    interval=0.01,
                    what=f"{target} transactions at the relayhost",
                )
                time.sleep(delays[cycle])
                killed_at = time.monotonic()
                gateway.kill()
                assert gateway.process is not None and gateway.process.returncode == -9
                logs.append(gateway.log_text)
                print(
                    f"cycle {cycle + 1}: SIGKILL with {sum(len(s.acked) for s in senders)} acknowledged, "
                    f"{sink.count()} transactions at the relayhost"
                )
                time.sleep(downtimes[cycle])
                down.append((killed_at, time.monotonic()))
                gateway.start(timeout=30)
                gateway.wait_for_log(r"spool .* recovered: ")
            for sender in senders:
                sender.join(SENDER_DEADLINE + 10)
            assert not any(sender.is_alive() for sender in senders), "a sender thread did not finish"
        finally:
            stop.set()

        acked = {tag: sent for sender in senders for tag, sent in sender.acked.items()}
        unacked = {tag for sender in senders for tag in sender.unacked}
        errors = sum((sender.errors for sender in senders), Counter())
        assert len(acked) >= total // 2, f"only {len(acked)} of {total} messages were acknowledged; errors {errors}"
        wanted = {(tag, recipient) for tag, (_, recipients) in acked.items() for recipient in recipients}
        try:
            wait_until(
                lambda: wanted <= set(deliveries(sink.accepted())),
                timeout=60,
                interval=0.2,
                what="every acknowledged recipient at the relayhost",
            )
        except AssertionError:
            pass  # reported below as losses, with their queue IDs
        wait_until(
            lambda: "Mail queue is empty" in gateway.cli("queue", "list").stdout,
            timeout=30,
            interval=0.5,
            what="an empty queue",
        )
        logs.append(gateway.log_text)

        accepted = sink.accepted()
        counts = deliveries(accepted)
        lost = sorted(pair for pair in wanted if counts[pair] == 0)
        # Two kinds, both counted: the relayhost took the first copy while the gateway was alive (the 250 was
        # on its way or unread when the kill came), or while it was down (it had sent the end of data, then
        # died before the reply: no spool can prevent those).
        per_kill, while_down, repeated = repeats_per_kill(accepted, counts, down)
        repeats = sum(per_kill.values())
        # each worker process gets its share of the limit, rounded up (gateway.workers.role)
        in_flight = -(-CONCURRENCY // fault_workers) * fault_workers * 2
        print(
            f"seed {seed}: {len(acked)} acknowledged ({len(wanted)} recipients), {len(unacked)} attempts without "
            f"250 ({len({tag for tag, _ in counts} & unacked)} of those delivered anyway), "
            f"client errors {dict(errors)}"
        )
        print(
            f"deliveries repeated: {repeats} in {KILL_CYCLES} kills ({while_down} of them first taken by the "
            f"relayhost while the gateway was down); per kill {dict(sorted(per_kill.items()))}"
        )
        for (tag, recipient), how in list(repeated.items())[:20]:
            print(f"  {tag} to {recipient}: {how}")
            queue_id = acked[tag][0] if tag in acked else None
            for run, log in enumerate(logs, 1):
                for line in log.splitlines():
                    if queue_id is not None and queue_id in line and "relay" in line:
                        print(f"    run {run}: {line}")
        assert not lost, f"seed {seed}: {len(lost)} acknowledged deliveries lost: " + ", ".join(
            f"{tag} to {rcpt} (queue ID {acked[tag][0]})" for tag, rcpt in lost
        )
        assert not [tag for tag, _ in counts if tag not in acked and tag not in unacked], "unknown messages arrived"
        assert not per_kill[0], f"seed {seed}: deliveries repeated without a kill: {repeated}"
        assert max(per_kill.values(), default=0) <= in_flight, (
            f"seed {seed}: more deliveries repeated at one kill than can be in flight ({in_flight}): {dict(per_kill)}"
        )
        assert repeats <= KILL_CYCLES, (
            f"seed {seed}: {repeats} deliveries repeated in {KILL_CYCLES} kills "
            f"(at most one per kill on average): {repeated}"
        )
        assert all("Traceback" not in log for log in logs), "the gateway logged a traceback"
