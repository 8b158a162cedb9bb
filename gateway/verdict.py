"""What a policy concludes: an Action, an optional Reply, header edits.

Merge rule when several verdicts meet in one stage (deterministic):
REJECT > TEMPFAIL > DISCARD > HOLD > ACCEPT > CONTINUE; ties keep configured order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.reply import Reply


class Action(StrEnum):
    """A policy's decision for one stage (Haraka CONT/OK/DENY/DENYSOFT, Postfix access(5))."""

    CONTINUE = "continue"  # no objection; the next policy runs
    ACCEPT = "accept"  # decisive yes for this stage; required at RCPT
    REJECT = "reject"  # 5xx; ends the stage (at RCPT: this recipient only)
    TEMPFAIL = "tempfail"  # 4xx; ends the stage
    DISCARD = "discard"  # client gets 250, nothing is spooled
    HOLD = "hold"  # client gets 250, message spooled into the hold queue


PRECEDENCE = {
    Action.REJECT: 5,
    Action.TEMPFAIL: 4,
    Action.DISCARD: 3,
    Action.HOLD: 2,
    Action.ACCEPT: 1,
    Action.CONTINUE: 0,
}


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """Header fields to prepend (in order), field names to remove, fields whose value to replace.

    replace: (name, new value) pairs; the first field of that name keeps its place and
    gets the new value (e.g. a rewritten Subject), or is prepended when absent.
    drop: exact raw fields (name, colon, value and continuation lines, without the
    final CRLF) to remove, one occurrence each (header_checks IGNORE).
    """

    prepend: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    drop: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy's answer.

    reply: required for REJECT (5xx) and TEMPFAIL (4xx).
    reason: a short bounded token for logs and metrics ("relay_denied", "virus").
    detail: free text for the log line only.

    Raises:
        ValueError: when the reply's class does not fit the action.
    """

    action: Action
    reply: Reply | None = None
    headers: HeaderEdit = field(default_factory=HeaderEdit)
    reason: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.action is Action.REJECT and (self.reply is None or not self.reply.is_permanent):
            raise ValueError("REJECT needs a 5xx reply")
        if self.action is Action.TEMPFAIL and (self.reply is None or not self.reply.is_transient):
            raise ValueError("TEMPFAIL needs a 4xx reply")

    @property
    def is_terminal(self) -> bool:
        """True when the verdict ends the stage (anything but CONTINUE)."""
        return self.action is not Action.CONTINUE


CONTINUE = Verdict(Action.CONTINUE)
ACCEPT = Verdict(Action.ACCEPT)


def strongest(verdicts: list[Verdict]) -> Verdict:
    """The verdict that wins by the precedence above (first one on ties); CONTINUE if empty."""
    best = CONTINUE
    for verdict in verdicts:
        if PRECEDENCE[verdict.action] > PRECEDENCE[best.action]:
            best = verdict
    return best
