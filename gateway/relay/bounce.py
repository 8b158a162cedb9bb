"""Delivery status notifications (bounces and delay warnings) for failed recipients.

A DSN is a ``multipart/report; report-type=delivery-status`` message (RFC 6522,
formerly RFC 3462) with three parts, in the layout Postfix's bounce(8) uses:

1. ``text/plain`` — a human explanation ("This is the mail system at host …")
   followed by one paragraph per recipient with the remote reply;
2. ``message/delivery-status`` — the machine-readable report (RFC 3464 §2): one
   per-message block and one block per recipient;
3. ``text/rfc822-headers`` — the header section of the original message only,
   never its body (the sender has the body; returning it would also return
   whatever a content filter objected to).

The result is bytes with CRLF line endings and no line over 998 octets (RFC 5322
§2.1.1). The delivery-status part is ASCII: addresses with non-ASCII characters
use the ``utf-8`` address type in its ``utf-8-addr-xtext`` form (RFC 6533 §3).
The original headers are copied byte for byte (8-bit bytes included, the part is
then labelled ``8bit``); only their line endings are normalised to CRLF and a
line over the limit is folded (:func:`extract_headers` says where the header
section ends).

DSNs are never sent to the null sender and never about our own DSNs
(:func:`should_bounce`; RFC 5321 §4.5.5, RFC 3464 §2 — this prevents bounce loops).
"""

from __future__ import annotations

import quopri
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.message import FileText
from gateway.relay import dsn_format as fmt
from gateway.reply import Reply

ACTIONS = frozenset({"failed", "delayed", "relayed"})
"""RFC 3464 §2.3.3 actions this module reports (delivered/relayed/expanded are not bounces)."""

HEADER_SIZE_LIMIT = 102400
"""Most bytes of original headers returned (Postfix ``header_size_limit`` default).

The excess is dropped at a line boundary, so a message with an absurd header
section does not come back as an absurd DSN."""

UNTRUSTED_HEADER_LIMIT = 4096
"""Most bytes of original headers returned about mail from an untrusted client.

Its envelope sender may be forged, making the DSN backscatter to a third
party: what goes back to that party is kept small (the first fields, which
carry our Received: and the Subject, Message-ID and From of most messages)."""

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
# RFC 5322 dot-atom-text characters: the queue ID becomes the left side of Message-ID.
_ATEXT_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
# A header field line (RFC 5322 §2.2 field name, obsolete WSP before ':' allowed) or a
# continuation line (RFC 5322 §2.2.3).
_HEADER_LINE_RE = re.compile(rb"^(?:[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t])")
_LINE_RE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
# Next hop as logged and spooled: "host[address]:port", each piece optional.
_NEXT_HOP_RE = re.compile(r"^([^\[\]\s:]+)?(\[[^\]\s]*\])?(?::\d+)?$")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient to report in a DSN.

    Attributes:
        address: the envelope recipient (RFC 5321 mailbox, without angle
            brackets); may contain UTF-8 (SMTPUTF8).
        reply: the last reply for this recipient, remote or synthesized (e.g.
            ``451 4.4.1`` for a refused connection); 4xx or 5xx.
        remote_mta: the next hop that sent ``reply`` — ``host[ip]:port`` as in
            ``RecipientStatus.relay``, or a bare host name — or None when the
            reply was made locally (no connection, lifetime expired). The text
            shows it as given; ``Remote-MTA`` gets the host name only.
        action: ``"failed"`` (given up: bounce) or ``"delayed"`` (still being
            retried: warning only), RFC 3464 §2.3.3.
        original: the address the client gave: its ORCPT parameter, or the RCPT address an alias
            rewrote (``Original-Recipient``); original_type: its address type (``rfc822``, from ORCPT).

    Raises:
        ValueError: on an unknown action, a 2xx reply, an empty address, or
            CR/LF/NUL in ``address`` or ``remote_mta`` (header injection).
    """

    address: str
    reply: Reply
    remote_mta: str | None
    action: str = "failed"
    original: str | None = None
    original_type: str = "rfc822"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {sorted(ACTIONS)}")
        if self.reply.is_success != (self.action == "relayed"):
            raise ValueError(f"a {self.reply.code} reply cannot be reported as {self.action}")
        if not self.address:
            raise ValueError("recipient address is empty")
        fmt.check_line("address", self.address)
        if self.original is not None:
            fmt.check_line("original", self.original)
            fmt.check_line("original_type", self.original_type)
        if self.remote_mta is not None:
            fmt.check_line("remote_mta", self.remote_mta)
            if not self.remote_mta.strip():
                raise ValueError("remote_mta is blank; use None when unknown")


def should_bounce(original_sender: str, is_bounce: bool) -> bool:
    """True when a DSN may be sent to ``original_sender``.

    Never to the null sender (RFC 5321 §4.5.5: a DSN is sent with ``MAIL FROM:<>``
    and a failure notice about it must not produce another one) and never about
    one of our own DSNs (``SpoolEntry.is_bounce``), which Postfix discards as a
    double bounce.

    Args:
        original_sender: the envelope sender, ``""`` for the null sender (``"<>"``
            is accepted as the same thing).
        is_bounce: True when the failed message is itself a DSN we generated.
    """
    return not is_bounce and original_sender.strip() not in ("", "<>")


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    original_queue_id: str,
    arrival: float,
    recipients: Sequence[FailedRecipient],
    original_message: bytes | FileText,
    now: float,
    postmaster: str | None = None,
    header_limit: int = HEADER_SIZE_LIMIT,
    envid: str | None = None,
) -> bytes:
    """Build a complete DSN message (RFC 3464 in RFC 6522 multipart/report).

    The subject is "Undelivered Mail Returned to Sender" when any recipient
    failed and "Delayed Mail (still being retried)" when all are delayed
    (Postfix's wording). Send it with the null envelope sender ``MAIL FROM:<>``
    to ``original_sender`` and spool it with ``is_bounce=True``.

    Args:
        reporting_mta: our host name (ASCII), used in ``From``, ``Message-ID``,
            ``Reporting-MTA`` and the text.
        original_sender: envelope sender of the failed message; not null.
        original_queue_id: queue ID of the failed message (RFC 5322 atext and dots).
        arrival: when the failed message was queued, unix seconds (``Arrival-Date``).
        recipients: the recipients to report, in order; at least one.
        original_message: the failed message as spooled, bytes; only its header
            section is returned (:func:`extract_headers`).
        now: current time, unix seconds (``Date``, ``Last-Attempt-Date``).
        postmaster: address named in the text for further assistance; defaults
            to the word "postmaster" as in Postfix's template.
        header_limit: most bytes of original headers returned
            (:data:`UNTRUSTED_HEADER_LIMIT` for mail from untrusted clients).
        envid: the ENVID the sender gave with MAIL (RFC 3461), returned as ``Original-Envelope-Id``.

    Returns:
        The message, header section and body, bytes, CRLF line endings.

    Raises:
        ValueError: when there are no recipients, the sender is null, the host
            name or queue ID is malformed, a value contains CR/LF/NUL, or a time
            is not a valid timestamp.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if original_sender.strip() in ("", "<>"):
        raise ValueError("never send a DSN to the null sender (RFC 5321 §4.5.5)")
    fmt.check_line("original_sender", original_sender)
    if not _HOSTNAME_RE.match(reporting_mta):
        raise ValueError(f"reporting_mta {reporting_mta!r} is not an ASCII host name")
    if not _ATEXT_RE.match(original_queue_id):
        raise ValueError(f"original_queue_id {original_queue_id!r} is not a dot-atom")
    if postmaster is not None:
        fmt.check_line("postmaster", postmaster)

    date = fmt.rfc5322_date(now)
    delayed_only = all(r.action == "delayed" for r in recipients)
    relayed_only = all(r.action == "relayed" for r in recipients)
    if relayed_only:
        text_body, text_cte, charset = _relayed_text(reporting_mta, recipients)
    else:
        text_body, text_cte, charset = _text_part(
            reporting_mta,
            [r for r in recipients if r.action != "relayed"],
            arrival,
            now,
            postmaster or "postmaster",
            delayed_only,
        )
    if envid is not None:
        fmt.check_line("envid", envid)
    status_body = _delivery_status(reporting_mta, original_queue_id, original_sender, arrival, recipients, date, envid)
    headers_body = extract_headers(original_message, header_limit)
    headers_cte = "8bit" if any(byte >= 0x80 for byte in headers_body) else "7bit"
    parts = [
        (
            fmt.fields(
                [
                    ("Content-Description", "Notification"),
                    ("Content-Type", f"text/plain; charset={charset}"),
                    ("Content-Transfer-Encoding", text_cte),
                ]
            ),
            text_body,
        ),
        (
            fmt.fields(
                [
                    ("Content-Description", "Delivery report"),
                    ("Content-Type", "message/delivery-status"),
                    ("Content-Transfer-Encoding", "7bit"),
                ]
            ),
            status_body,
        ),
        (
            fmt.fields(
                [
                    ("Content-Description", "Undelivered Message Headers"),
                    ("Content-Type", "text/rfc822-headers"),
                    ("Content-Transfer-Encoding", headers_cte),
                ]
            ),
            headers_body,
        ),
    ]
    boundary = fmt.boundary(body for _, body in parts)
    subject = (
        "Successful Mail Delivery Report"
        if relayed_only
        else "Delayed Mail (still being retried)"
        if delayed_only
        else "Undelivered Mail Returned to Sender"
    )
    top = [
        ("Date", date),
        ("From", f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"),
        ("Subject", subject),
        ("To", f"<{original_sender}>"),
        ("Message-ID", f"<{original_queue_id}.{int(now)}.{secrets.token_hex(6)}@{reporting_mta}>"),
        # RFC 3834 §5: DSNs are "auto-replied", so responders do not answer them.
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"'),
    ]
    if headers_cte == "8bit":
        # RFC 2045 §6.4: a multipart is labelled with the widest encoding of its parts.
        top.append(("Content-Transfer-Encoding", "8bit"))

    delimiter = b"\r\n--" + boundary.encode("ascii")
    out = [fmt.fields(top), b"\r\n", b"This is a MIME-encapsulated message.\r\n"]
    for part_headers, body in parts:
        out += [delimiter, b"\r\n", part_headers, b"\r\n", body]
    out += [delimiter, b"--\r\n"]
    return b"".join(out)


def extract_headers(message: bytes | FileText, limit: int = HEADER_SIZE_LIMIT) -> bytes:
    """Return the header section of ``message``, ready to be a text/rfc822-headers body.

    The header section (RFC 5322 §2.1) ends at the first empty line, or at the first
    line that is neither a header field nor a continuation line: a broken message
    may run its text on without the empty line, and that text is body to Postfix
    cleanup and Python's parser alike, so it is not returned. A leading mbox
    ``From `` line is kept. Lines are returned byte for byte (8-bit bytes too) with
    their endings normalised to CRLF (a spooled message may have bare LF; SMTP
    needs CRLF, RFC 5321 §2.3.8), so the result is empty or ends with CRLF; a line
    over 998 octets is folded and more than ``limit`` bytes are cut at a line boundary.

    Args:
        message: the raw message, bytes, LF or CRLF line endings.
        limit: most bytes returned (:data:`HEADER_SIZE_LIMIT` by default).
    """
    out: list[bytes] = []
    size = 0
    for index, match in enumerate(_LINE_RE.finditer(message)):
        content = match.group()
        content = content[:-1] if content.endswith(b"\n") else content
        # Only a CR right before LF (or the end) ends a line; a stray CR is data.
        content = content[:-1] if content.endswith(b"\r") else content
        if not content:
            break
        if not _HEADER_LINE_RE.match(content) and not (index == 0 and content.startswith(b"From ")):
            break
        line = fmt.fold(content, fmt.MAX_LINE - 8)
        if size + len(line) > limit:
            break
        out.append(line)
        size += len(line)
    return b"".join(out)


def _text_part(
    reporting_mta: str,
    recipients: Sequence[FailedRecipient],
    arrival: float,
    now: float,
    postmaster: str,
    delayed_only: bool,
) -> tuple[bytes, str, str]:
    """Return ``(body, content-transfer-encoding, charset)`` of the human-readable part."""
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if delayed_only:
        hours = max(0, int((now - arrival) // 3600))
        lines += [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            f"Your message could not be delivered for {hours} hour(s).",
            "It will be retried until it expires.",
        ]
    else:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. Its headers are attached below.",
        ]
    lines += [
        "",
        f"For further assistance, please send mail to {postmaster}.",
        "",
        "If you do so, please include this problem report. You can",
        "delete your own text from the attached returned message.",
        "",
        "                   The mail system",
    ]
    for recipient in failed if not delayed_only else delayed:
        lines += ["", *_explain(recipient)]
    if failed and delayed:
        lines += [
            "",
            "Delivery to the following recipients is still being retried;",
            "you do not need to resend the message to them:",
        ]
        for recipient in delayed:
            lines += ["", *_explain(recipient)]
    return _encoded_text(lines)


def _encoded_text(lines: list[str]) -> tuple[bytes, str, str]:
    """``(body, content-transfer-encoding, charset)`` of text lines: 7bit when it can be, else quoted-printable."""
    text = "\r\n".join(lines) + "\r\n"
    raw = fmt.utf8(text)
    if raw.isascii() and all(len(line) <= fmt.MAX_LINE for line in raw.split(b"\r\n")):
        return raw, "7bit", "us-ascii"
    # Quoted-printable keeps the DSN 7-bit (deliverable without 8BITMIME) and
    # soft-wraps an overlong reply text.
    encoded = quopri.encodestring(raw.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    return encoded, "quoted-printable", "utf-8"


def _relayed_text(reporting_mta: str, recipients: Sequence[FailedRecipient]) -> tuple[bytes, str, str]:
    """The human-readable part of a success notice (Postfix's wording for a relayed message)."""
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message was successfully delivered to the destination(s)",
        "listed below. If the message was delivered to mailbox you will",
        "receive no further notifications. Otherwise you may still receive",
        "notifications of mail delivery errors from other systems.",
        "",
        "                   The mail system",
    ]
    for recipient in recipients:
        lines += ["", *_explain(recipient, "relayed to a mailer that does not do DSN: ")]
    return _encoded_text(lines)


def _explain(recipient: FailedRecipient, prefix: str = "") -> list[str]:
    """Postfix-style lines ``<rcpt>: host H said: 550 5.1.1 text``, wrapped at 76 columns."""
    said = f"host {recipient.remote_mta} said: " if recipient.remote_mta else ""
    return textwrap.wrap(
        f"<{recipient.address}>: {prefix}{said}{recipient.reply}",
        width=76,
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _delivery_status(
    reporting_mta: str,
    queue_id: str,
    sender: str,
    arrival: float,
    recipients: Sequence[FailedRecipient],
    date: str,
    envid: str | None = None,
) -> bytes:
    """The message/delivery-status body (RFC 3464 §2.2, §2.3), ASCII, CRLF."""
    blocks = [
        fmt.fields(
            [
                *([("Original-Envelope-Id", envid)] if envid else []),  # RFC 3464 §2.2.1
                ("Reporting-MTA", f"dns; {reporting_mta}"),
                ("X-Gateway-Queue-ID", queue_id),
                ("X-Gateway-Sender", fmt.address_field(sender)),
                ("Arrival-Date", fmt.rfc5322_date(arrival)),
            ]
        )
    ]
    for recipient in recipients:
        reply = recipient.reply
        status = reply.status
        if recipient.action == "delayed" and not status.startswith("4"):
            # RFC 3464 §2.3.4: a delayed recipient carries a transient (4.x.x) status.
            status = "4" + status[1:]
        fields = [
            # RFC 3464 §2.3.1: the address the client gave, where an alias rewrote it
            *([("Original-Recipient", _original_field(recipient))] if recipient.original else []),
            ("Final-Recipient", fmt.address_field(recipient.address)),
            ("Action", recipient.action),
            ("Status", status),
        ]
        if recipient.remote_mta:
            fields.append(("Remote-MTA", f"dns; {_mta_name(recipient.remote_mta)}"))
        # "smtp" marks a reply from the remote server; a locally made one is X-Unix.
        diagnostic_type = "smtp" if recipient.remote_mta else "X-Unix"
        fields.append(("Diagnostic-Code", f"{diagnostic_type}; {fmt.ascii_escape(str(reply))}"))
        fields.append(("Last-Attempt-Date", date))
        blocks.append(fmt.fields(fields))
    return b"\r\n".join(blocks)


def _original_field(recipient: FailedRecipient) -> str:
    """``rfc822; addr`` (an alias's RCPT address, or an ORCPT of that type), or ORCPT's own ``type; address``."""
    assert recipient.original is not None
    if recipient.original_type == "rfc822":
        return fmt.address_field(recipient.original)
    return f"{recipient.original_type}; {recipient.original}"


def _mta_name(remote_mta: str) -> str:
    """The name for ``Remote-MTA: dns; …`` (RFC 3464 §2.3.5): ``mx.example.net`` of
    ``mx.example.net[192.0.2.1]:25``, ``[192.0.2.1]`` of ``[192.0.2.1]:25``."""
    match = _NEXT_HOP_RE.match(remote_mta)
    name = match.group(1) or match.group(2) if match else None
    return fmt.ascii_escape(name or remote_mta)
