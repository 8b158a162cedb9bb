"""Load and accounting of the SIGKILL crash runs: tests/faults/test_crash.py and the bench's crash extra.

Senders are threads with smtplib, one session per message; each attempt of a
message carries a fresh tag in its Message-ID (``<tag@faults.test>``), so what
the relayhost (:mod:`tests.harness.sink_process`) took can be matched to what
got our 250. :func:`repeats_per_kill` charges every copy too many to the kill it
came with.
"""

from __future__ import annotations

import random
import smtplib
import threading
import time
from collections import Counter

from tests.harness.sink_process import Accepted

TEMPFAIL = "451 4.3.0 Try again later"
ATTEMPTS_PER_MESSAGE = 40  # connection attempts for one message while the server is down


def recipients_of(sender: int, number: int) -> list[str]:
    """The recipients of a message: the same for every attempt of it; every other message has two."""
    return [f"s{sender}-m{number}-r{k}@elsewhere.org" for k in range(1 + number % 2)]


def tempfail_schedule(rng: random.Random, senders: int, messages_per_sender: int, share: float) -> dict[str, list[str]]:
    """``share`` of all planned recipients, each refused at RCPT with 451 once or (a third of them) twice."""
    planned = [r for s in range(senders) for n in range(messages_per_sender) for r in recipients_of(s, n)]
    return {r: [TEMPFAIL] * rng.choice((1, 1, 2)) for r in rng.sample(planned, int(len(planned) * share))}


class Sender(threading.Thread):
    """Sends ``messages`` messages to 127.0.0.1:``port``, each under a fresh tag per attempt; records the 250s.

    Stops at ``stop`` or after ``deadline`` seconds, whatever happens.
    """

    def __init__(self, index: int, port: int, stop: threading.Event, messages: int, deadline: float) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index, self.port, self.stop = index, port, stop
        self.messages, self.deadline = messages, deadline
        self.acked: dict[str, tuple[str, list[str]]] = {}  # tag -> (queue ID of the 250, recipients)
        self.unacked: list[str] = []  # tags sent without a 250 (may or may not arrive)
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        deadline = time.monotonic() + self.deadline
        for number in range(self.messages):
            recipients = recipients_of(self.index, number)
            for attempt in range(ATTEMPTS_PER_MESSAGE):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                tag = f"s{self.index}-m{number}-a{attempt}"
                try:
                    queue_id = self._send(tag, recipients)
                except (OSError, smtplib.SMTPException) as error:
                    self.errors[type(error).__name__] += 1
                    self.unacked.append(tag)
                    time.sleep(random.uniform(0.02, 0.08))  # clients retry at their own pace, not in step
                    continue
                self.acked[tag] = (queue_id, recipients)
                break

    def _send(self, tag: str, recipients: list[str]) -> str:
        body = (
            f"Message-ID: <{tag}@faults.test>\r\nSubject: crash test {tag}\r\n"
            f"From: <s{self.index}@example.com>\r\n\r\nbody of {tag}\r\n"
        ).encode()
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
            client.ehlo("crash.test")
            code, text = client.mail(f"s{self.index}@example.com")
            if code != 250:
                raise smtplib.SMTPException(f"MAIL {code} {text!r}")
            for recipient in recipients:
                code, text = client.rcpt(recipient)
                if code != 250:
                    raise smtplib.SMTPException(f"RCPT {code} {text!r}")
            code, text = client.data(body)
        if code != 250:
            raise smtplib.SMTPException(f"DATA {code} {text!r}")
        # "2.0.0 Ok: queued as ID", from the gateway and from Postfix alike
        assert text.startswith(b"2.0.0 Ok: queued as "), text
        return text.rsplit(b" ", 1)[1].decode()


def tag_of(message: Accepted) -> str:
    """The sender's tag of a message the relayhost took (its Message-ID is ``<tag@faults.test>``)."""
    tag, at, domain = message.message_id.partition("@")
    assert at and domain == "faults.test", message
    return tag


def deliveries(accepted: list[Accepted]) -> Counter[tuple[str, str]]:
    """(tag, recipient) -> how many times the relayhost took that message for that recipient."""
    counts: Counter[tuple[str, str]] = Counter()
    for message in accepted:
        for recipient in message.rcpt_tos:
            counts[(tag_of(message), recipient.lower())] += 1
    return counts


def first_taken(accepted: list[Accepted], tag: str, recipient: str) -> float:
    """``time.monotonic()`` when the relayhost first took ``tag`` for ``recipient`` (right before its 250)."""
    return min(m.accepted_at for m in accepted if recipient in (r.lower() for r in m.rcpt_tos) and tag_of(m) == tag)


def repeats_per_kill(
    accepted: list[Accepted], counts: Counter[tuple[str, str]], down: list[tuple[float, float]]
) -> tuple[Counter[int], int, dict[tuple[str, str], str]]:
    """Charge each copy too many to the first kill whose restart came after the first copy.

    ``down``: ``time.monotonic()`` of each SIGKILL and of the restart after it. Returns (kill number ->
    copies too many, 0 for copies with no kill to blame; how many of them the relayhost first took while
    the server was down, i.e. after it had sent the end of data and died before the reply; (tag, recipient)
    -> what happened, for the printout).
    """
    per_kill: Counter[int] = Counter()
    while_down = 0
    repeated: dict[tuple[str, str], str] = {}
    for (tag, recipient), copies in sorted(counts.items()):
        if copies <= 1:
            continue
        taken = first_taken(accepted, tag, recipient)
        number, (killed_at, _) = next(((n, k) for n, k in enumerate(down, 1) if k[1] >= taken), (0, (0.0, 0.0)))
        per_kill[number] += copies - 1
        if number and killed_at <= taken:
            while_down += copies - 1
            how = f"first taken {(taken - killed_at) * 1000:.1f} ms after SIGKILL {number}, while the server was down"
        elif number:
            how = f"first taken {(killed_at - taken) * 1000:.1f} ms before SIGKILL {number}"
        else:
            how = "first taken after the last restart"
        repeated[(tag, recipient)] = f"{copies} copies, {how}"
    return per_kill, while_down, repeated
