"""The relayhost is down (connection refused), then answers 421, then is back: exactly-once delivery.

The retry schedule is checked roughly from the log: each recipient's attempts
come no earlier than the announced "next attempt in Ns" (the spacing of the
``delay=`` values, seconds since arrival), announced delays stay within
``[minimal_backoff_time, maximal_backoff_time]`` (+10 % jitter) and grow until
they reach the maximum. Nothing asserts how fast anything is.
"""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import pairwise

from tests.faults.helpers import submit
from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink

MIN_BACKOFF = 1.0
MAX_BACKOFF = 2.0  # seconds: the schedule 1, 2, 2 ... still shows the doubling and the cap
DEFERRED_RE = re.compile(
    r"(?P<id>[0-9A-F]+): to=<(?P<rcpt>[^>]+)>, relay=\S+, delay=(?P<delay>[0-9.]+), "
    r"attempts=(?P<attempts>\d+), status=deferred \((?P<reply>[^)]*)"
)
NEXT_RE = re.compile(r"(?P<id>[0-9A-F]+): deferred, \d+ recipient\(s\) left, next attempt in (?P<next>\d+)s")
SENT_RE = re.compile(
    r"(?P<id>[0-9A-F]+): to=<(?P<rcpt>[^>]+)>, relay=\S+, delay=(?P<delay>[0-9.]+), "
    r"attempts=(?P<attempts>\d+), status=sent"
)


def test_relayhost_down_then_421_then_back_delivers_everything_exactly_once(gateway_factory):
    sink = SmtpSink()  # bound, not started: connections are refused
    config = relay_config(
        sink.port,
        minimal_backoff_time=f'"{MIN_BACKOFF:g}s"',
        maximal_backoff_time=f'"{MAX_BACKOFF:g}s"',
        queue_run_delay='"1s"',
    )
    try:
        with gateway_factory(config) as gateway:
            messages = {}
            for number in range(5):
                recipients = [f"out{number}@elsewhere.org"] + ([f"cc{number}@elsewhere.org"] if number % 2 else [])
                body = f"Subject: outage {number}\r\nMessage-ID: <outage{number}@faults.test>\r\n\r\nbody {number}\r\n"
                queue_id = submit(gateway.port, "sender@example.com", recipients, body.encode())
                messages[queue_id] = (recipients, body.encode())
            everyone = sorted(r for recipients, _ in messages.values() for r in recipients)

            # Phase 1: refused connections; wait for three deferrals of every message.
            for queue_id in messages:
                gateway.wait_for_log(rf"{queue_id}: deferred, \d+ recipient\(s\) left", timeout=40, count=3)
            assert sink.messages == []

            # Phase 2: the relayhost answers, but 421 to MAIL (and closes), for at least one more attempt each.
            sink.refuse_all = "421 4.3.2 Service shutting down, try later"
            sink.start()
            for queue_id in messages:
                gateway.wait_for_log(rf"{queue_id}: to=<[^>]+>, .*status=deferred \(421 4\.3\.2 ", timeout=30)
            assert sink.messages == []

            # Phase 3: back to normal.
            sink.refuse_all = None
            for queue_id in messages:
                gateway.wait_for_log(rf"{queue_id}: removed", timeout=30)
            assert "Mail queue is empty" in gateway.cli("queue", "list").stdout
            log = gateway.log_text
    finally:
        sink.stop()

    # Exactly once per recipient, bytes intact.
    assert sink.delivered == {recipient: 1 for recipient in everyone}
    assert len(sink.messages) == len(messages)
    for recipients, body in messages.values():
        (message,) = sink.messages_for(recipients[0])
        assert sorted(message.rcpt_tos) == sorted(recipients)
        assert message.data.endswith(body)

    # The retry schedule, per recipient: attempts and their spacing.
    attempts: dict[tuple[str, str], list[tuple[int, float, str]]] = defaultdict(list)
    announced: dict[str, list[int]] = defaultdict(list)
    for line in log.splitlines():
        if match := DEFERRED_RE.search(line):
            attempts[(match["id"], match["rcpt"])].append(
                (int(match["attempts"]), float(match["delay"]), match["reply"])
            )
        elif match := NEXT_RE.search(line):
            announced[match["id"]].append(int(match["next"]))
    for line in log.splitlines():
        if match := SENT_RE.search(line):
            attempts[(match["id"], match["rcpt"])].append((int(match["attempts"]), float(match["delay"]), "sent"))
    print({queue_id: nexts for queue_id, nexts in announced.items()})
    for (queue_id, recipient), tries in attempts.items():
        numbers = [number for number, _, _ in tries]
        assert numbers == list(range(1, len(tries) + 1)), (queue_id, recipient, numbers)
        assert tries[-1][2] == "sent" and all(reply != "sent" for _, _, reply in tries[:-1])
        assert any("Connect call failed" in reply or "refused" in reply.lower() for _, _, reply in tries)
        assert any(reply.startswith("421 4.3.2") for _, _, reply in tries)
        nexts = announced[queue_id]
        assert len(nexts) == len(tries) - 1, (queue_id, nexts, tries)
        for ((_, before, _), (_, after, _)), promised in zip(pairwise(tries), nexts):
            # Never retried before the announced time (%.0f rounding and the scan interval aside).
            assert after - before >= promised - 0.6, (queue_id, recipient, before, after, promised)
    for queue_id, nexts in announced.items():
        assert all(round(MIN_BACKOFF) <= n <= round(MAX_BACKOFF * 1.1) for n in nexts), (queue_id, nexts)
        # Backoff grows (doubling, or the message's age) until the maximum; it never shrinks below it.
        for before, after in pairwise(nexts):
            assert after >= min(before, round(MAX_BACKOFF)), (queue_id, nexts)
        assert max(nexts) >= round(MAX_BACKOFF), (queue_id, nexts)
