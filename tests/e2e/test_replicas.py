"""Three replicas behind a real haproxy (Debian, TCP mode, ``send-proxy-v2``, ``option smtpchk``), one SIGKILLed.

Each replica is its own gateway process on its own loopback address, with its
own spool, all relaying to one sink. Clients connect from 127.0.0.5 to haproxy
(which reaches the replicas from 127.0.0.1). Shown:

* the sessions spread over the three, and every message at the sink carries
  the real client's address (127.0.0.5, from the PROXY v2 header) in the
  ``Received:`` field of the replica that took it;
* SIGKILL of one replica while several clients send: haproxy's health checks
  mark it DOWN, and every session that starts after the kill succeeds (a
  connection haproxy cannot make to the dead one is redispatched to another);
* nothing acknowledged is lost: the killed replica, restarted on its own spool,
  delivers what it had acknowledged. To be sure it holds such mail when it
  dies, the sink refuses every MAIL (451) for the moment of the kill, so the
  replica has deferred messages in its spool; one of them is followed through
  the restart. A message delivered twice (a kill between the sink's 250 and the
  spool update) is counted and printed, never failed.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from tests.faults.helpers import wait_until
from tests.harness.haproxy import HaproxyServer
from tests.harness.helpers import relay_config
from tests.harness.ports import free_port

CLIENT = "127.0.0.5"  # the real client, not haproxy's 127.0.0.1
REPLICAS = {"a": "127.0.0.11", "b": "127.0.0.12", "c": "127.0.0.13"}
SERVER_NAMES = {"a": "s0", "b": "s1", "c": "s2"}  # haproxy's names, in the order given
VICTIM = "b"
SENDERS = 6
MESSAGES_PER_SENDER = 15
ATTEMPTS_PER_MESSAGE = 10
SENDER_DEADLINE = 120.0  # seconds for a sender thread, whatever happens
MESSAGE_ID_RE = re.compile(rb"^Message-ID: <([^>]+)@replicas\.test>\r$", re.MULTILINE)
RECEIVED_RE = re.compile(rb"Received: from (\S+) \(unknown \[([0-9.]+)\]\)\s+by gw-(\w)\.test")
QUEUE_ID = r"[0-9A-F]{19}"


@dataclass
class Attempt:
    """One session: when it started (monotonic seconds), its message's tag, the 250's queue ID or the error."""

    started: float
    tag: str
    queue_id: str | None = None
    error: str = ""


class Sender(threading.Thread):
    """Sends ``messages`` messages through the balancer, one session each, a fresh tag per attempt."""

    def __init__(self, index: int, port: int, messages: int = MESSAGES_PER_SENDER) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index, self.port, self.messages = index, port, messages
        self.attempts: list[Attempt] = []

    def run(self) -> None:
        deadline = time.monotonic() + SENDER_DEADLINE
        for number in range(self.messages):
            for attempt_no in range(ATTEMPTS_PER_MESSAGE):
                if time.monotonic() > deadline:
                    return
                attempt = Attempt(time.monotonic(), f"s{self.index}-m{number}-a{attempt_no}")
                self.attempts.append(attempt)
                try:
                    attempt.queue_id = self._send(attempt.tag)
                    break
                except (OSError, smtplib.SMTPException) as error:
                    attempt.error = f"{type(error).__name__}: {error}"
                    time.sleep(0.1)

    def _send(self, tag: str) -> str:
        body = (
            f"Message-ID: <{tag}@replicas.test>\r\nSubject: replicas {tag}\r\n"
            f"From: <s{self.index}@outside.test>\r\n\r\nbody of {tag}\r\n"
        ).encode()
        with smtplib.SMTP("127.0.0.1", self.port, source_address=(CLIENT, 0), timeout=30) as client:
            client.ehlo("client.test")
            for verb, argument in (("MAIL", f"FROM:<s{self.index}@outside.test>"), ("RCPT", f"TO:<{tag}@example.net>")):
                code, text = client.docmd(verb, argument)
                if code != 250:
                    raise smtplib.SMTPException(f"{verb} {code} {text!r}")
            code, text = client.data(body)
        if code != 250:
            raise smtplib.SMTPException(f"DATA {code} {text!r}")
        return text.rsplit(b" ", 1)[1].decode()


@pytest.fixture
def fleet(gateway_factory, sink):
    """The three replicas (started) and haproxy in front of them with SMTP checks every 0.2 s, all UP."""
    replicas = {}
    for name, address in REPLICAS.items():
        port = free_port()
        config = relay_config(sink.port, 'upstream_proxy_networks = ["127.0.0.1/32"]\n', myhostname=f'"gw-{name}.test"')
        config += (
            f'[[listener]]\nname = "smtp"\naddress = "{address}:{port}"\ntls = "starttls"\n'
            'upstream_proxy_protocol = "haproxy"\n'
        )
        replicas[name] = gateway_factory(config, name=name)
        replicas[name].port = port
        replicas[name].start()
    servers = [(REPLICAS[name], replicas[name].port) for name in REPLICAS]
    with HaproxyServer(
        {"smtp": (servers, "send-proxy-v2")}, health_check="smtpchk EHLO lb.test", check_interval=0.2
    ) as balancer:
        balancer.wait_for_states("smtp", {server: "UP" for server in SERVER_NAMES.values()})
        yield replicas, balancer


def client_connects(log_text: str) -> int:
    """Sessions of the real client a replica's log shows (haproxy's own health checks are from 127.0.0.1)."""
    return len(re.findall(rf"connect from unknown\[{re.escape(CLIENT)}\]:\d+ listener=smtp", log_text))


def test_replicas_share_the_load_and_a_killed_one_loses_nothing(fleet, sink):
    replicas, balancer = fleet
    victim = replicas[VICTIM]
    senders = [Sender(index, balancer.ports["smtp"]) for index in range(SENDERS)]
    for sender in senders:
        sender.start()

    def acked() -> int:
        return sum(1 for sender in senders for attempt in list(sender.attempts) if attempt.queue_id)

    total = SENDERS * MESSAGES_PER_SENDER
    wait_until(lambda: acked() >= total // 3, timeout=60, interval=0.01, what=f"{total // 3} acknowledged")
    # the sink refuses for the moment of the kill: the victim surely dies with acknowledged mail in its spool
    sink.refuse_all = "451 4.3.0 busy, try later"
    deferred = victim.wait_for_log(rf"{QUEUE_ID}: to=<[^>]+>, relay=.*status=deferred", timeout=30)[0]
    held_queue_id = re.search(rf"({QUEUE_ID}): to=", deferred).group(1)  # type: ignore[union-attr]
    victim.kill()
    killed_at = time.monotonic()
    sink.refuse_all = None
    victim_log_before = victim.log_text
    balancer.wait_for_states("smtp", {SERVER_NAMES[VICTIM]: "DOWN"})
    down_at = time.monotonic()
    for sender in senders:
        sender.join(SENDER_DEADLINE + 10)
    assert not any(sender.is_alive() for sender in senders), "a sender did not finish"
    # with the victim DOWN: four new sessions, one after the other, go to the other two in turn
    late = Sender(SENDERS, balancer.ports["smtp"], messages=4)
    late.run()
    senders.append(late)

    victim.start(timeout=30)
    recovered = victim.wait_for_log(r"spool .* recovered: ")[0]
    balancer.wait_for_states("smtp", {SERVER_NAMES[VICTIM]: "UP"})
    victim.wait_for_log(rf" {held_queue_id}: to=<[^>]+>, relay=.*status=sent", timeout=30)

    attempts = [attempt for sender in senders for attempt in sender.attempts]
    acknowledged = {attempt.tag: attempt.queue_id for attempt in attempts if attempt.queue_id}
    failed = [attempt for attempt in attempts if not attempt.queue_id]
    failed_after_kill = [attempt for attempt in failed if attempt.started > killed_at]
    total += late.messages
    assert len(acknowledged) == total, f"{total - len(acknowledged)} messages never acknowledged: {failed[-5:]}"
    assert not failed_after_kill, f"sessions begun after the kill failed: {failed_after_kill[:5]}"

    def arrived() -> Counter[str]:
        counts: Counter[str] = Counter()
        for message in sink.messages:
            match = MESSAGE_ID_RE.search(message.data)
            assert match is not None, message.data[:300]
            counts[match.group(1).decode()] += 1
        return counts

    try:
        wait_until(
            lambda: set(acknowledged) <= set(arrived()),
            timeout=60,
            interval=0.2,
            what="every acknowledged message at the sink",
        )
    except AssertionError:
        pass  # reported below as losses, by tag and queue ID
    counts = arrived()
    lost = {tag: queue_id for tag, queue_id in acknowledged.items() if not counts[tag]}
    duplicates = {tag: count for tag, count in counts.items() if count > 1}
    relayed_by: Counter[str] = Counter()
    relayed_late: Counter[str] = Counter()
    for message in sink.messages:
        received = RECEIVED_RE.search(message.data.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" "))
        assert received is not None, message.data[:400]
        assert received.group(2) == CLIENT.encode(), received.group(0)  # the client, not the balancer
        relayed_by[received.group(3).decode()] += 1
        if message.rcpt_tos[0].startswith(f"s{SENDERS}-"):  # the late sender's
            relayed_late[received.group(3).decode()] += 1
    sessions = {
        name: client_connects(victim_log_before if name == VICTIM else replicas[name].log_text) for name in REPLICAS
    }
    print(
        f"{total} acknowledged of {len(attempts)} sessions; failed sessions {len(failed)} (begun before the kill); "
        f"{sum(1 for a in attempts if killed_at < a.started <= down_at)} sessions begun between the kill and DOWN "
        f"({down_at - killed_at:.2f}s later); client sessions per replica {sessions}; "
        f"relayed per replica {dict(relayed_by)} (after DOWN {dict(relayed_late)}); "
        f"duplicates at the sink {len(duplicates)} {duplicates}; "
        f"unacknowledged attempts delivered anyway "
        f"{sum(1 for a in failed if counts[a.tag])}; {recovered.split('recovered: ', 1)[-1]}"
    )
    assert not lost, f"acknowledged and never delivered: {lost}"
    assert all(count > 0 for count in sessions.values()), sessions  # the load spread over the three
    assert set(relayed_by) == set(REPLICAS), relayed_by
    assert relayed_late == {name: 2 for name in REPLICAS if name != VICTIM}, relayed_late  # the dead one skipped
