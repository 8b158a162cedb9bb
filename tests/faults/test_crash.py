"""SIGKILL of the gateway at random moments while 20 sessions send: nothing acknowledged is lost.

The seed of the kill schedule is printed (``FAULTS_SEED=<n>`` reproduces it).
A kill between the relayhost's 250 and the spool update may deliver a message
twice; that is counted and printed, never failed. A message that got our 250
and never reaches the relayhost is a loss and fails the test.
"""

from __future__ import annotations

import os
import random
import re
import smtplib
import threading
import time
from collections import Counter

from tests.harness.helpers import relay_config
from tests.faults.helpers import wait_until
from tests.harness.gateway_process import GatewayProcess

SENDERS = 20
MESSAGES_PER_SENDER = 15
KILL_CYCLES = 3
ATTEMPTS_PER_MESSAGE = 40       # connection attempts for one message while the gateway is down
SENDER_DEADLINE = 90.0          # seconds for a sender thread, whatever happens
MESSAGE_ID_RE = re.compile(rb"^Message-ID: <([^>]+)@faults\.test>\r$", re.MULTILINE | re.IGNORECASE)


class Sender(threading.Thread):
    """Sends MESSAGES_PER_SENDER messages, each under a fresh tag per attempt; records the 250s."""

    def __init__(self, index: int, port: int, stop: threading.Event) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index, self.port, self.stop = index, port, stop
        self.acked: dict[str, str] = {}      # tag -> queue ID of the 250
        self.unacked: list[str] = []         # tags sent without a 250 (may or may not arrive)
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        deadline = time.monotonic() + SENDER_DEADLINE
        for number in range(MESSAGES_PER_SENDER):
            for attempt in range(ATTEMPTS_PER_MESSAGE):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                tag = f"s{self.index}-m{number}-a{attempt}"
                try:
                    queue_id = self._send(tag)
                except (OSError, smtplib.SMTPException) as error:
                    self.errors[type(error).__name__] += 1
                    self.unacked.append(tag)
                    time.sleep(0.05)
                    continue
                self.acked[tag] = queue_id
                break

    def _send(self, tag: str) -> str:
        body = (f"Message-ID: <{tag}@faults.test>\r\nSubject: crash test {tag}\r\n"
                f"From: <s{self.index}@example.com>\r\n\r\nbody of {tag}\r\n").encode()
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            client.ehlo("crash.test")
            code, text = client.mail(f"s{self.index}@example.com")
            if code != 250:
                raise smtplib.SMTPException(f"MAIL {code} {text!r}")
            code, text = client.rcpt(f"{tag}@elsewhere.org")
            if code != 250:
                raise smtplib.SMTPException(f"RCPT {code} {text!r}")
            code, text = client.data(body)
        if code != 250:
            raise smtplib.SMTPException(f"DATA {code} {text!r}")
        assert text.startswith(b"2.0.0 Ok: queued as "), text
        return text.rsplit(b" ", 1)[1].decode()


def _acked_count(senders: list[Sender]) -> int:
    return sum(len(sender.acked) for sender in senders)


def test_sigkill_at_random_moments_loses_nothing(gateway_factory, sink):
    seed = int(os.environ.get("FAULTS_SEED", random.SystemRandom().randrange(1 << 32)))
    rng = random.Random(seed)
    print(f"kill schedule seed: FAULTS_SEED={seed}")
    total = SENDERS * MESSAGES_PER_SENDER
    # Kill when this many messages were acknowledged (spread over the run), plus a random delay.
    targets = sorted(rng.sample(range(total // 10, total * 8 // 10), KILL_CYCLES))
    delays = [rng.uniform(0.0, 0.05) for _ in range(KILL_CYCLES)]
    downtimes = [rng.uniform(0.0, 0.3) for _ in range(KILL_CYCLES)]
    print(f"kill after acknowledged counts {targets}, extra delays {[round(d, 3) for d in delays]}")

    gateway: GatewayProcess = gateway_factory(relay_config(sink.port))
    gateway.start()
    logs: list[str] = []
    stop = threading.Event()
    senders = [Sender(index, gateway.port, stop) for index in range(SENDERS)]
    for sender in senders:
        sender.start()
    try:
        for cycle in range(KILL_CYCLES):
            target = targets[cycle]
            wait_until(lambda target=target: _acked_count(senders) >= target  # type: ignore[misc]
                       or not any(s.is_alive() for s in senders),
                       timeout=60, interval=0.005, what=f"{target} acknowledged messages")
            time.sleep(delays[cycle])
            acked_at_kill = _acked_count(senders)
            gateway.kill()
            assert gateway.process is not None and gateway.process.returncode == -9
            logs.append(gateway.log_text)
            print(f"cycle {cycle + 1}: SIGKILL with {acked_at_kill} acknowledged, "
                  f"{len(sink.messages)} at the relayhost")
            time.sleep(downtimes[cycle])
            gateway.start(timeout=30)
            gateway.wait_for_log(r"spool .* recovered: ")
        for sender in senders:
            sender.join(SENDER_DEADLINE + 10)
        assert not any(sender.is_alive() for sender in senders), "a sender thread did not finish"
    finally:
        stop.set()

    acked = {tag: queue_id for sender in senders for tag, queue_id in sender.acked.items()}
    unacked = [tag for sender in senders for tag in sender.unacked]
    errors = sum((sender.errors for sender in senders), Counter())
    assert len(acked) >= total // 2, f"only {len(acked)} of {total} messages were acknowledged; errors {errors}"

    def arrived() -> Counter[str]:
        counts: Counter[str] = Counter()
        for message in sink.messages:
            match = MESSAGE_ID_RE.search(message.data)
            assert match is not None, message.data[:300]
            counts[match.group(1).decode()] += 1
        return counts

    try:
        wait_until(lambda: set(acked) <= set(arrived()), timeout=60, interval=0.2,
                   what="every acknowledged message at the relayhost")
    except AssertionError:
        pass  # reported below as losses, with their queue IDs
    wait_until(lambda: "Mail queue is empty" in gateway.cli("queue", "list").stdout, timeout=30, interval=0.5,
               what="an empty queue")
    logs.append(gateway.log_text)

    counts = arrived()
    lost = sorted(tag for tag in acked if counts[tag] == 0)
    duplicates = {tag: n for tag, n in counts.items() if n > 1}
    unacked_arrived = sorted(tag for tag in unacked if counts[tag])
    print(f"seed {seed}: {len(acked)} acknowledged, {len(unacked)} attempts without 250 "
          f"({len(unacked_arrived)} of those delivered anyway), client errors {dict(errors)}")
    print(f"duplicates at the relayhost: {len(duplicates)} {duplicates}")
    for tag in sorted(duplicates)[:5]:  # how each came about: the log lines of its queue ID, per run
        queue_id = acked.get(tag)
        if queue_id is not None:
            for run, log in enumerate(logs, 1):
                for line in log.splitlines():
                    if queue_id in line:
                        print(f"  run {run}: {line}")
    # Each message has its own recipient: the sink's per-recipient counter agrees with the Message-IDs.
    delivered = sink.delivered
    assert all(delivered[f"{tag}@elsewhere.org"] == n for tag, n in counts.items())
    assert not lost, (f"seed {seed}: {len(lost)} acknowledged message(s) lost: "
                      + ", ".join(f"{tag} (queue ID {acked[tag]})" for tag in lost))
    assert not [tag for tag in counts if tag not in acked and tag not in unacked], "unknown messages arrived"
    assert all("Traceback" not in log for log in logs), "the gateway logged a traceback"
