"""SMTP replies with RFC 3463 enhanced status codes, and the catalogue we send.

Every reply the gateway writes to a client (or records for a recipient) is a
:class:`Reply`. The type enforces the invariant that aiosmtpd's own test suite
checks (``qa/test_1testsuite.py: test_enhanced``): the class digit of the
enhanced status code equals the class of the basic reply code, so a
``450 5.7.1`` cannot be built.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

_STATUS_RE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_REPLY_LINE_RE = re.compile(r"^([245]\d\d)[ -]([245]\.\d{1,3}\.\d{1,3}) (.*)$", re.S)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply line (RFC 5321 §4.2) with an enhanced status code.

    Attributes:
        code: basic reply code, 200-599 (2xx, 4xx or 5xx).
        status: enhanced status code ``"c.s.d"`` (RFC 3463); ``c`` equals ``code // 100``.
        text: one line of text; never contains CR or LF.

    Raises:
        ValueError: on a code outside 2xx/4xx/5xx, a malformed or mismatched
            status, or a text with CR/LF.
    """

    code: int
    status: str
    text: str

    def __post_init__(self) -> None:
        if not (200 <= self.code < 600) or self.code // 100 == 3:
            raise ValueError(f"reply code {self.code} is not 2xx, 4xx or 5xx")
        match = _STATUS_RE.fullmatch(self.status)
        if not match:
            raise ValueError(f"enhanced status {self.status!r} is not of the form c.s.d")
        if int(match.group(1)) != self.code // 100:
            raise ValueError(f"class of {self.status} does not match reply code {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must be a single line")

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def is_success(self) -> bool:
        """True for 2xx."""
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        """True for 4xx (RFC 5321 §4.2.1: try again later)."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """True for 5xx."""
        return 500 <= self.code < 600

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form ``{"code": int, "status": str, "text": str}``."""
        return {"code": self.code, "status": self.status, "text": self.text}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Reply:
        """Inverse of :meth:`to_dict`. Raises ValueError/KeyError/TypeError on bad data."""
        return cls(int(data["code"]), str(data["status"]), str(data["text"]))  # type: ignore[call-overload]

    @classmethod
    def from_remote(cls, code: int, message: str) -> Reply:
        """Build a Reply from a remote server's code and (possibly multi-line) text.

        The enhanced code is taken from the text when the server sent one whose
        class matches; otherwise a generic ``c.0.0`` is used (RFC 3463 §3.1).
        Multi-line texts are joined with ``" / "``; codes outside 2xx/4xx/5xx
        (a broken server) become ``451 4.5.0`` transient errors.
        """
        text = " / ".join(part.strip() for part in message.splitlines() if part.strip())
        if not (200 <= code < 600) or code // 100 == 3:
            return cls(451, "4.5.0", f"unexpected reply code {code}: {text}"[:400])
        match = re.match(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+(.*))?$", text, re.S)
        if match and int(match.group(1)) == code // 100:
            status = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
            return cls(code, status, match.group(4) or text)
        return cls(code, f"{code // 100}.0.0", text or "(no text)")


def parse_reply_line(line: str) -> Reply | None:
    """Parse ``"550 5.7.1 text"`` into a Reply, or None when it has no enhanced code."""
    match = _REPLY_LINE_RE.match(line)
    if not match:
        return None
    try:
        return Reply(int(match.group(1)), match.group(2), match.group(3))
    except ValueError:
        return None


# The catalogue: every fixed reply the gateway sends, in one place (tested for the invariant).
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TEMP_POLICY_FAILURE = Reply(451, "4.7.1", "Content check unavailable, try again later")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, try again later")
SPOOL_FULL = Reply(452, "4.3.1", "Insufficient system storage")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops")
BARE_CR_IN_HEADER = Reply(550, "5.5.2", "Error: bare <CR> received in the header section")
NUL_IN_MESSAGE = Reply(550, "5.6.0", "Error: NUL character in message content")
UNDECLARED_8BIT = Reply(550, "5.6.0", "Error: 8-bit message content without BODY=8BITMIME")
USER_UNKNOWN = Reply(550, "5.1.1", "Recipient address rejected: User unknown in relay recipient table")
RECIPIENT_LOOKUP_FAILED = Reply(451, "4.3.0", "Recipient address rejected: Temporary lookup failure")
ALIAS_EXPANSION_FAILED = Reply(451, "4.3.0", "Recipient address rejected: virtual alias expansion failed")
NUL_IN_COMMAND = Reply(501, "5.5.2", "Error: NUL character in command")
TOO_MANY_JUNK_COMMANDS = Reply(421, "4.7.0", "Error: too many junk commands, closing transmission channel")
PIPELINING_VIOLATION = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
TALKED_BEFORE_GREETING = Reply(554, "5.5.1", "Error: SMTP protocol synchronization: talked before the greeting")
SPOOL_FULL_CLOSING = Reply(421, "4.3.1", "Insufficient system storage, closing transmission channel")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
TLS_ALREADY_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Error: too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing transmission channel")
BAD_ADDRESS_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
VRFY_DISABLED = Reply(502, "5.5.1", "VRFY command is disabled")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
INVALID_HELO = Reply(501, "5.5.2", "Helo command rejected: Invalid name")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
SERVICE_UNAVAILABLE = Reply(421, "4.7.0", "Service not available, closing transmission channel")
AUTH_NOT_ENABLED = Reply(502, "5.5.1", "Error: authentication not enabled")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_NEED_EHLO = Reply(503, "5.5.1", "Error: send EHLO first")
AUTH_ALREADY = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication exchange cancelled")
AUTH_BAD_RESPONSE = Reply(501, "5.5.2", "Cannot decode response")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed: authentication failure")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_THROTTLED = Reply(454, "4.7.0", "Error: too many failed logins, try again later")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Error: too many failed logins, closing transmission channel")
START_MAIL_INPUT = "354 End data with <CR><LF>.<CR><LF>"  # intermediate: no enhanced code (RFC 3463 §3)
EHLO_EXTENSIONS = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN")  # added to aiosmtpd's EHLO lines
EHLO_AUTH = "250-AUTH PLAIN LOGIN"  # where AUTH is offered (RFC 4954 §3; gateway.smtpd.sasl.MECHANISMS)


def for_recipient(reply: Reply, address: str) -> Reply:
    """``reply`` about one recipient: its text prefixed with ``<address>:`` (Postfix's RCPT replies)."""
    return Reply(reply.code, reply.status, f"<{address}>: {reply.text}")


def helo_ok(hostname: str) -> str:
    """``250 <our name>``, the answer to HELO (RFC 5321 §4.1.1.1; no enhanced code, RFC 2034 §3)."""
    return f"250 {hostname}"


def auth_challenge(challenge: bytes) -> str:
    """``334 <base64 of challenge>``, a server challenge of SMTP AUTH (RFC 4954 §4; a 3xx has no enhanced code)."""
    return "334 " + base64.b64encode(challenge).decode("ascii")


def sender_not_owned(address: str, login: str) -> Reply:
    """Postfix's refusal of a sender the login does not own (``reject_authenticated_sender_login_mismatch``)."""
    return Reply(553, "5.7.1", f"<{address}>: Sender address rejected: not owned by user {login}")


def author_not_owned(address: str, login: str) -> Reply:
    """A ``From:`` address the login does not own (``[auth] check_from_header``, maddy's ``authorize_sender``)."""
    shown = f"<{address}>" if address else "<>"
    return Reply(550, "5.7.1", f"{shown}: From: header address rejected: not owned by user {login}")


def too_many_connections_from(address: str) -> Reply:
    """Postfix's answer past ``smtpd_client_connection_rate_limit`` (the connection is then closed)."""
    return Reply(421, "4.7.0", f"Error: too many connections from {address}")


def too_much_mail_from(address: str) -> Reply:
    """Postfix's answer to MAIL past ``smtpd_client_message_rate_limit``."""
    return Reply(450, "4.7.1", f"Error: too much mail from {address}")


def too_many_recipients_from(address: str) -> Reply:
    """Postfix's answer to RCPT past ``smtpd_client_recipient_rate_limit``."""
    return Reply(450, "4.7.1", f"Error: too many recipients from {address}")


def undeliverable(probe_reply: str) -> Reply:
    """A recipient its next hop refused to an address verification probe (Postfix's text)."""
    return Reply(550, "5.1.1", f"Recipient address rejected: undeliverable address: {probe_reply}"[:400])


def unverified(why: str) -> Reply:
    """A recipient whose verification probe got no final answer: try again later (Postfix's text)."""
    return Reply(450, "4.1.1", f"Recipient address rejected: unverified address: {why}"[:400])


def bad_dsn_parameter(parameter: str) -> Reply:
    """A malformed or repeated RFC 3461 parameter of MAIL or RCPT (RFC 3461 §4)."""
    return Reply(501, "5.5.4", f"Error: invalid parameter {parameter[:80]}")


def queued(queue_id: str) -> Reply:
    """``250 2.0.0 Ok: queued as <ID>``, the acknowledgement after the spool commit."""
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


# Content verdicts: the replies of the policies (spam, viruses, DMARC, header_checks).
SPAM_REJECTED = Reply(550, "5.7.1", "Message rejected as spam")
SPAM_SOFT_REJECT = Reply(451, "4.7.1", "Try again later")
CONTENT_REJECTED_STATUS = "5.7.1"
CONTENT_REJECTED_TEXT = "message content rejected"  # Postfix CLEANUP_STAT_CONT
SCANNER_REJECTED_TEXT = "Spam message rejected"


def scanner_rejected(text: str | None) -> Reply:
    """554 5.7.1 with the scanner's own text (rspamd's ``messages.smtp_message``), or ours without one.

    Raises:
        ValueError: when ``text`` holds CR or LF (the caller keeps it to one line).
    """
    return Reply(554, "5.7.1", text or SCANNER_REJECTED_TEXT)


def virus_found(signature: str) -> Reply:
    """554 5.7.1 naming the antivirus signature, as amavis and ClamSMTP do."""
    return Reply(554, "5.7.1", f"Virus found: {signature}")


def dmarc_rejected(domain: str) -> Reply:
    """550 5.7.1 naming the From: domain whose ``p=reject`` policy failed (RFC 7489 §6.6.1)."""
    return Reply(550, "5.7.1", f"Message rejected by the DMARC policy of {domain}")


def content_rejected(status: str = CONTENT_REJECTED_STATUS, text: str = "") -> Reply:
    """550 with an operator's header_checks REJECT status (5.x.x) and text, or Postfix's default text.

    Raises:
        ValueError: when ``status`` is not a 5.x.x enhanced code, or ``text`` holds CR or LF.
    """
    return Reply(550, status, text or CONTENT_REJECTED_TEXT)
