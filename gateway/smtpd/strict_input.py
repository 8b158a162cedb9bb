"""Input the SMTP edge refuses before any command runs: NULs, junk floods, talking out of turn.

Also the checks of the message text as received (:func:`content_violation`) and
of paths aiosmtpd would take although they are broken (:func:`unterminated_path`).

The rules of one session, checked by :class:`GatewaySMTP <gateway.smtpd.protocol.GatewaySMTP>`
before each command it dispatches and before its greeting:

* a NUL byte in a command's argument (``EHLO a<NUL>b``; RFC 5321 §4.1.1 has no
  place for it) gets ``501 5.5.2`` and the session goes on (in MAIL and RCPT
  the address checks answer it, ``501 5.1.7`` / ``501 5.1.3``);
* more than ``smtpd_junk_command_limit`` (100) junk commands, NOOP, RSET, VRFY
  and ETRN as Postfix counts them, get ``421 4.7.0`` and the session is closed;
  the count starts again after each accepted message, as Postfix's does;
* a client that sends before the greeting (an early talker, as Postfix
  postscreen's pregreet test) gets ``554 5.5.1`` and is closed. What arrives
  before the greeting is written counts; ``smtpd_pregreet_wait`` (default 0s:
  none) holds the greeting back that long from untrusted clients, so that
  a bot that does not wait for it is caught every time, as postscreen's
  ``postscreen_greet_wait`` does;
* a command followed by more input before its reply where that is not allowed
  (Postfix ``smtpd_forbid_unauth_pipelining``, default on): any command of a
  client that did not get PIPELINING from EHLO (HELO, or no greeting at all),
  and, with PIPELINING, a command that must end its group (RFC 2920 §3.1:
  EHLO, HELO, STARTTLS, DATA) gets ``554 5.5.0`` and the session is closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import reply as replies
from gateway.reply import Reply

JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "ETRN"})
# Their own address checks refuse a NUL with the more telling 501 5.1.7 / 501 5.1.3.
ADDRESS_COMMANDS = frozenset({"MAIL", "RCPT"})
# RFC 2920 §3.1: these end a group even with PIPELINING (QUIT and NOOP too, but nothing can follow QUIT
# that matters, and a NOOP flood is the junk limit's business).
GROUP_ENDERS = frozenset({"EHLO", "HELO", "STARTTLS", "DATA"})


@dataclass(frozen=True, slots=True)
class InputRules:
    """The strict-input settings of a listener's sessions (top-level config keys).

    Attributes:
        junk_command_limit: junk commands a session may send before it is closed (0: no limit).
        forbid_unauth_pipelining: close a session that pipelines where RFC 2920 does not allow it.
        pregreet_wait: seconds the greeting is held back from an untrusted client.
    """

    junk_command_limit: int = 100
    forbid_unauth_pipelining: bool = True
    pregreet_wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Violation:
    """A refused command: the reply, the refusal's log reason, and whether the session ends with it."""

    reply: Reply
    reason: str
    closes: bool


NUL_VIOLATION = Violation(replies.NUL_IN_COMMAND, "nul_in_command", closes=False)
JUNK_VIOLATION = Violation(replies.TOO_MANY_JUNK_COMMANDS, "junk_command_limit", closes=True)
PIPELINING_VIOLATION = Violation(replies.PIPELINING_VIOLATION, "unauth_pipelining", closes=True)


class CommandChecks:
    """The per-session state of :data:`InputRules`: the junk count.

    Args:
        rules: the listener's rules.
    """

    __slots__ = ("rules", "junk_commands")

    def __init__(self, rules: InputRules) -> None:
        self.rules = rules
        self.junk_commands = 0

    def check(self, command: str, arg: str | None, *, pending_input: bool, esmtp: bool) -> Violation | None:
        """The violation of ``command`` (upper case) with ``arg``, or None to run it.

        Args:
            command: the verb as aiosmtpd dispatches it.
            arg: its argument (surrogate-escaped text), None when there is none.
            pending_input: more input was already read past this command's line.
            esmtp: the client greeted with EHLO, so it was offered PIPELINING.
        """
        if arg is not None and "\x00" in arg and command not in ADDRESS_COMMANDS:
            return NUL_VIOLATION
        if pending_input and self.rules.forbid_unauth_pipelining and (not esmtp or command in GROUP_ENDERS):
            return PIPELINING_VIOLATION
        if command in JUNK_COMMANDS and self.rules.junk_command_limit:
            self.junk_commands += 1
            if self.junk_commands > self.rules.junk_command_limit:
                return JUNK_VIOLATION
        return None

    def message_accepted(self) -> None:
        """A message was accepted: the junk count starts again (Postfix: "reset after mail is delivered")."""
        self.junk_commands = 0


def unterminated_path(arg: str | None, keyword: str) -> bool:
    """True for ``FROM:<a@b`` / ``TO:<a@b`` (``keyword`` ``"FROM:"``/``"TO:"``): a path opened with ``<``
    and never closed (RFC 5321 §4.1.2), which aiosmtpd's address parser would take as an address."""
    if not arg or arg[: len(keyword)].upper() != keyword:
        return False
    path = arg[len(keyword) :].lstrip()
    return path.startswith("<") and ">" not in path


def content_violation(*, has_nul: bool, has_8bit: bool, strict_8bitmime: bool, declared_8bit: bool) -> Violation | None:
    """What is wrong with a message's text as received, or None.

    NUL octets are refused always (RFC 5322 §2.3 and §3.5 allow none); 8-bit
    octets only with ``strict_8bitmime`` and when the client declared neither
    ``BODY=8BITMIME`` nor SMTPUTF8.

    Args:
        has_nul, has_8bit: what the DATA reader found in the text (:class:`~gateway.smtpd.data_reader.DataResult`).
        strict_8bitmime: the ``strict_8bitmime`` setting.
        declared_8bit: the client sent ``BODY=8BITMIME`` or ``SMTPUTF8``.
    """
    if has_nul:
        return Violation(replies.NUL_IN_MESSAGE, "nul_in_message", closes=False)
    if strict_8bitmime and has_8bit and not declared_8bit:
        return Violation(replies.UNDECLARED_8BIT, "strict_8bitmime", closes=False)
    return None
