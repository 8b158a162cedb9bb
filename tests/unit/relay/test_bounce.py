"""RFC 3464 delivery status notifications (gateway.relay.bounce)."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Sequence
from email.message import EmailMessage, Message, MIMEPart
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from gateway.relay.bounce import FailedRecipient, build_dsn, extract_headers, should_bounce
from gateway.reply import Reply
from tests.harness.samples import CORPUS

CORPUS_FILES = sorted(path for path in CORPUS.rglob("*") if path.is_file() and not path.name.startswith("LICENSE"))
# A few real messages for the full structure test: plain, MIME, LF-only, 8-bit headers.
SAMPLE_FILES = [
    "mail-gem/plain_emails/basic_email.eml",
    "mail-gem/plain_emails/basic_email_lf.eml",
    "mail-gem/rfc6532/utf8_headers.eml",
    "mail-gem/attachment_emails/attachment_pdf_non_ascii.eml",
    "mail-gem/error_emails/content_transfer_encoding_with_8bits.eml",
    "mail-gem/mime_emails/raw_email_with_nested_attachment.eml",
]

NOW = 1_700_003_600.0
ARRIVAL = 1_700_000_000.0
HOST = "gw.example.com"
QUEUE_ID = "18BC5F1A2B3C4D5E6F7"

ORIGINAL = (
    b"Received: from client.example.org (client.example.org [192.0.2.10])\r\n"
    b"\tby gw.example.com with ESMTP id 18BC5F1A2B3C4D5E6F7\r\n"
    b"From: Sender <sender@example.org>\r\n"
    b"To: rcpt@example.net\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"SECRET BODY LINE one\r\n"
    b"SECRET BODY LINE two\r\n"
)
ORIGINAL_HEADERS = ORIGINAL.split(b"\r\n\r\n", 1)[0] + b"\r\n"

ORIGINAL_8BIT = (
    b"From: J\xc3\xbcrgen M\xc3\xbcller <juergen@example.de>\r\n"
    b"To: =?utf-8?q?Bj=C3=B6rn?= <bjoern@example.net>\r\n"
    b"Subject: Gr\xc3\xbc\xc3\x9fe \xe2\x80\x94 latin-1 byte \xe9 too\r\n"
    b"\r\n"
    b"K\xc3\xb6rper SECRET BODY\r\n"
)
ORIGINAL_8BIT_HEADERS = ORIGINAL_8BIT.split(b"\r\n\r\n", 1)[0] + b"\r\n"

USER_UNKNOWN = Reply(550, "5.1.1", "<rcpt@example.net>: Recipient address rejected: User unknown")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full, try again later")
REFUSED = Reply(451, "4.4.1", "connect to mx.example.net[192.0.2.25]:25: Connection refused")


def make_dsn(
    recipients: Sequence[FailedRecipient] | None = None,
    original: bytes = ORIGINAL,
    sender: str = "sender@example.org",
    **kwargs: object,
) -> bytes:
    if recipients is None:
        recipients = [FailedRecipient("rcpt@example.net", USER_UNKNOWN, "mx.example.net")]
    return build_dsn(
        reporting_mta=HOST,
        original_sender=sender,
        original_queue_id=QUEUE_ID,
        arrival=ARRIVAL,
        recipients=recipients,
        original_message=original,
        now=NOW,
        **kwargs,  # type: ignore[arg-type]
    )


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts_of(raw: bytes) -> tuple[EmailMessage, list[MIMEPart]]:
    message = parse(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    return message, parts


def status_blocks(raw: bytes) -> list[Message]:
    """The per-message block, then one block per recipient (RFC 3464 §2.1)."""
    _, parts = parts_of(raw)
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    assert all(isinstance(block, Message) for block in blocks)
    return [block for block in blocks if isinstance(block, Message)]


def returned_headers(raw: bytes) -> bytes:
    _, parts = parts_of(raw)
    payload = parts[2].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def assert_wire_clean(raw: bytes) -> None:
    """CRLF only (no bare LF or CR) and no line over 998 octets (RFC 5322 §2.1.1)."""
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


# --- the envelope of the DSN ---------------------------------------------------------


def test_top_level_headers() -> None:
    message = parse(make_dsn())
    assert message["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert message["To"].addresses[0].addr_spec == "sender@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(message["Date"]).timestamp() == NOW
    assert re.fullmatch(rf"<{QUEUE_ID}\.[^@<>\s]+@{re.escape(HOST)}>", message["Message-ID"])
    assert message.defects == []


def test_raw_header_lines() -> None:
    head = make_dsn().split(b"\r\n\r\n", 1)[0]
    assert b"\r\nTo: <sender@example.org>\r\n" in head
    assert b"From: Mail Delivery System <MAILER-DAEMON@gw.example.com>\r\n" in head
    assert b"Content-Type: multipart/report; report-type=delivery-status;" in head


def test_message_ids_and_boundaries_are_unique() -> None:
    one, two = parse(make_dsn()), parse(make_dsn())
    assert one["Message-ID"] != two["Message-ID"]
    assert one.get_boundary() != two.get_boundary()


def test_boundary_not_in_content() -> None:
    raw = make_dsn()
    boundary = parse(raw).get_boundary()
    assert boundary is not None and len(boundary) <= 70
    delimiter = b"--" + boundary.encode()
    assert raw.count(delimiter) == 4  # three parts and the close delimiter


def test_structure_and_line_endings() -> None:
    raw = make_dsn()
    assert_wire_clean(raw)
    message, parts = parts_of(raw)
    assert message.defects == []
    assert all(part.defects == [] for part in parts)


# --- the human-readable part ---------------------------------------------------------


def test_text_part_postfix_style() -> None:
    _, parts = parts_of(make_dsn())
    text = parts[0].get_content()
    assert text.startswith(f"This is the mail system at host {HOST}.")
    assert "I'm sorry to have to inform you that your message could not" in text
    assert "please send mail to postmaster" in text
    unwrapped = " ".join(text.split())
    assert f"<rcpt@example.net>: host mx.example.net said: {USER_UNKNOWN}" in unwrapped
    assert parts[0].get_content_charset() == "us-ascii"


def test_text_part_names_postmaster_when_given() -> None:
    _, parts = parts_of(make_dsn(postmaster="help@example.com"))
    assert "please send mail to help@example.com." in parts[0].get_content()


def test_text_part_non_ascii_is_quoted_printable() -> None:
    raw = make_dsn([FailedRecipient("jürgen@example.de", USER_UNKNOWN, "mx.example.de")])
    _, parts = parts_of(raw)
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert "<jürgen@example.de>: host mx.example.de said:" in parts[0].get_content()
    # The notification and report stay 7-bit; only the returned headers may be 8-bit.
    assert raw.split(b"Content-Type: text/rfc822-headers", 1)[0].isascii()


# --- the delivery-status part --------------------------------------------------------


def test_per_message_fields() -> None:
    per_message = status_blocks(make_dsn())[0]
    assert per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert per_message["X-Gateway-Queue-ID"] == QUEUE_ID
    assert per_message["X-Gateway-Sender"] == "rfc822; sender@example.org"
    assert parsedate_to_datetime(str(per_message["Arrival-Date"])).timestamp() == ARRIVAL


def test_per_recipient_fields() -> None:
    recipients = [
        FailedRecipient("rcpt@example.net", USER_UNKNOWN, "mx.example.net"),
        FailedRecipient("other@example.com", Reply(554, "5.7.1", "Message rejected as spam"), "mx2.example.com"),
        FailedRecipient("late@example.org", REFUSED, None),  # expired after 4xx: failed, 4.x.x
    ]
    blocks = status_blocks(make_dsn(recipients))
    assert len(blocks) == 1 + len(recipients)
    expected = [
        ("rfc822; rcpt@example.net", "failed", "5.1.1", "dns; mx.example.net", f"smtp; {USER_UNKNOWN}"),
        (
            "rfc822; other@example.com",
            "failed",
            "5.7.1",
            "dns; mx2.example.com",
            "smtp; 554 5.7.1 Message rejected as spam",
        ),
        ("rfc822; late@example.org", "failed", "4.4.1", None, f"X-Unix; {REFUSED}"),
    ]
    for block, (final, action, status, remote, diagnostic) in zip(blocks[1:], expected):
        assert block["Final-Recipient"] == final
        assert block["Original-Recipient"] is None
        assert block["Action"] == action
        assert block["Status"] == status
        assert block["Remote-MTA"] == remote
        assert block["Diagnostic-Code"] == diagnostic
        assert parsedate_to_datetime(str(block["Last-Attempt-Date"])).timestamp() == NOW


@pytest.mark.parametrize(
    ("relay", "remote_mta"),
    [
        ("mx.example.net", "dns; mx.example.net"),
        ("mx.example.net[192.0.2.25]:25", "dns; mx.example.net"),
        ("[192.0.2.25]:587", "dns; [192.0.2.25]"),
        ("mx.example.net[2001:db8::25]:25", "dns; mx.example.net"),
    ],
)
def test_remote_mta_is_the_host_name_of_the_next_hop(relay: str, remote_mta: str) -> None:
    raw = make_dsn([FailedRecipient("rcpt@example.net", USER_UNKNOWN, relay)])
    assert status_blocks(raw)[1]["Remote-MTA"] == remote_mta
    _, parts = parts_of(raw)
    assert f"host {relay} said:" in " ".join(parts[0].get_content().split())


def test_all_delayed_is_a_warning() -> None:
    recipients = [
        FailedRecipient("a@example.net", MAILBOX_FULL, "mx.example.net", action="delayed"),
        # A delayed recipient carries a 4.x.x status even after a 5xx reply.
        FailedRecipient("b@example.net", Reply(550, "5.7.1", "try later"), "mx.example.net", action="delayed"),
    ]
    raw = make_dsn(recipients)
    message, parts = parts_of(raw)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert "THIS IS A WARNING ONLY" in parts[0].get_content()
    blocks = status_blocks(raw)
    assert [(b["Action"], b["Status"]) for b in blocks[1:]] == [("delayed", "4.2.2"), ("delayed", "4.7.1")]
    assert blocks[2]["Diagnostic-Code"] == "smtp; 550 5.7.1 try later"


def test_mixed_failed_and_delayed() -> None:
    recipients = [
        FailedRecipient("a@example.net", USER_UNKNOWN, "mx.example.net"),
        FailedRecipient("b@example.net", MAILBOX_FULL, "mx.example.net", action="delayed"),
    ]
    raw = make_dsn(recipients)
    message, parts = parts_of(raw)
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    text = parts[0].get_content()
    assert text.index("<a@example.net>") < text.index("still being retried") < text.index("<b@example.net>")
    assert [b["Action"] for b in status_blocks(raw)[1:]] == ["failed", "delayed"]


def test_utf8_recipient_uses_utf8_address_type() -> None:
    raw = make_dsn([FailedRecipient("jürgen+tag@bücher.example", USER_UNKNOWN, "mx.example")])
    block = status_blocks(raw)[1]
    # RFC 6533 §3 utf-8-addr-xtext: non-ASCII and "+" as \x{HEX}.
    assert block["Final-Recipient"] == r"utf-8; j\x{FC}rgen\x{2B}tag@b\x{FC}cher.example"
    report = raw.split(b"Content-Type: message/delivery-status", 1)[1].split(b"Content-Type: text/rfc822-headers", 1)[0]
    assert report.isascii()


def test_utf8_sender_and_non_ascii_reply_text() -> None:
    reply = Reply(550, "5.1.1", "Benutzer unbekannt: jürgen")
    raw = make_dsn([FailedRecipient("x@example.net", reply, "mx.example.net")], sender="björn@example.se")
    assert "To: <björn@example.se>\r\n".encode() in raw
    blocks = status_blocks(raw)
    assert blocks[0]["X-Gateway-Sender"] == r"utf-8; bj\x{F6}rn@example.se"
    assert blocks[1]["Diagnostic-Code"] == r"smtp; 550 5.1.1 Benutzer unbekannt: j\x{FC}rgen"
    assert_wire_clean(raw)


def test_long_reply_is_folded_under_998_octets() -> None:
    words = " ".join(f"word{i}" for i in range(400))
    long_reply = Reply(550, "5.7.1", words)
    blob = Reply(550, "5.7.1", "x" * 3000)  # no whitespace at all
    raw = make_dsn(
        [
            FailedRecipient("a@example.net", long_reply, "mx.example.net"),
            FailedRecipient("b@example.net", blob, "mx.example.net"),
        ]
    )
    assert_wire_clean(raw)
    blocks = status_blocks(raw)
    assert blocks[1]["Diagnostic-Code"] == f"smtp; 550 5.7.1 {words}"
    assert str(blocks[2]["Diagnostic-Code"]).replace(" ", "") == "smtp;5505.7.1" + "x" * 3000
    _, parts = parts_of(raw)
    assert "x" * 3000 in parts[0].get_content()  # quoted-printable keeps it whole


# --- the returned headers ------------------------------------------------------------


def test_headers_part_is_exact_and_has_no_body() -> None:
    raw = make_dsn()
    assert returned_headers(raw) == ORIGINAL_HEADERS
    assert b"SECRET BODY" not in raw
    _, parts = parts_of(raw)
    assert parts[2]["Content-Transfer-Encoding"] == "7bit"
    assert parse(raw)["Content-Transfer-Encoding"] is None


def test_8bit_headers_are_kept_byte_exact() -> None:
    raw = make_dsn(original=ORIGINAL_8BIT)
    assert returned_headers(raw) == ORIGINAL_8BIT_HEADERS
    assert ORIGINAL_8BIT_HEADERS in raw
    assert b"SECRET BODY" not in raw
    message, parts = parts_of(raw)
    assert parts[2]["Content-Transfer-Encoding"] == "8bit"
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert_wire_clean(raw)


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        # No empty line at all, last line without CRLF.
        (b"Subject: x\r\nX-A: y", b"Subject: x\r\nX-A: y\r\n"),
        (b"Subject: x\r\nX-A: y\r\n", b"Subject: x\r\nX-A: y\r\n"),
        # Text running on after the headers without the empty line is body.
        (b"Subject: x\r\nHello, this is the body.\r\nMore.\r\n", b"Subject: x\r\n"),
        # LF-only and mixed line endings become CRLF.
        (b"Subject: x\nX-A: y\n\nbody\n", b"Subject: x\r\nX-A: y\r\n"),
        (b"Subject: x\r\nX-A: y\n\r\nbody\r\n", b"Subject: x\r\nX-A: y\r\n"),
        # Folded fields stay folded.
        (b"Subject: a\r\n\tb\r\n  c\r\n\r\nbody", b"Subject: a\r\n\tb\r\n  c\r\n"),
        # A leading mbox From_ line is kept, as Python's parser keeps it as unixfrom.
        (
            b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n",
            b"From a@b Mon Jan  1 00:00:00 2024\r\nSubject: x\r\n",
        ),
        # Empty message, or no headers at all.
        (b"", b""),
        (b"\r\nbody only\r\n", b""),
        (b"just text\r\n", b""),
    ],
)
def test_extract_headers_edge_cases(original: bytes, expected: bytes) -> None:
    assert extract_headers(original) == expected
    raw = make_dsn(original=original)
    assert returned_headers(raw) == expected
    assert b"body" not in raw.split(b"Content-Type: text/rfc822-headers", 1)[1]
    assert_wire_clean(raw)


def test_overlong_original_header_line_is_folded() -> None:
    value = " ".join([f"<ref{i:04d}@example.org>" for i in range(200)])
    original = b"References: " + value.encode() + b"\r\nSubject: x\r\n\r\nbody\r\n"
    raw = make_dsn(original=original)
    assert_wire_clean(raw)
    headers = returned_headers(raw)
    unfolded = re.sub(rb"\r\n(?=[ \t])", b"", headers)
    assert unfolded == original.split(b"\r\n\r\n", 1)[0] + b"\r\n"


# --- real messages -------------------------------------------------------------------


def corpus_id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_dsn_for_real_messages(name: str) -> None:
    original = crlf((CORPUS / name).read_bytes())
    recipients = [
        FailedRecipient("rcpt@example.net", USER_UNKNOWN, "mx.example.net"),
        FailedRecipient("later@example.net", MAILBOX_FULL, "mx.example.net", action="delayed"),
    ]
    raw = make_dsn(recipients, original=original)
    assert_wire_clean(raw)
    message, parts = parts_of(raw)
    assert message.defects == []
    header_section = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert returned_headers(raw) == header_section
    eight_bit = not header_section.isascii()
    assert parts[2]["Content-Transfer-Encoding"] == ("8bit" if eight_bit else "7bit")
    blocks = status_blocks(raw)
    assert [(b["Action"], b["Status"]) for b in blocks[1:]] == [("failed", "5.1.1"), ("delayed", "4.2.2")]


def test_corpus_is_present() -> None:
    assert len(CORPUS_FILES) >= 100, f"expected the corpus at {CORPUS}"
    assert all((CORPUS / name).is_file() for name in SAMPLE_FILES)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=corpus_id)
def test_header_extraction_on_corpus(path: Path) -> None:
    original = crlf(path.read_bytes())
    raw = make_dsn(original=original)
    assert_wire_clean(raw)
    headers = returned_headers(raw)
    assert headers == extract_headers(original)

    # A prefix of the message, ending at a line boundary, never past the empty line:
    # so no body byte is returned.
    assert original.startswith(headers) or original + b"\r\n" == headers
    assert headers == b"" or headers.endswith(b"\r\n")
    first_empty_line = 0
    for line in original.split(b"\r\n"):
        if not line:
            break
        first_empty_line += len(line) + 2
    assert len(headers) <= first_empty_line

    # Python's parser finds the same header fields in the returned part as in the
    # original (it also ends the header section at a malformed line).
    def field_names(data: bytes) -> list[str]:
        return [name.lower() for name in email.message_from_bytes(data).keys()]

    assert field_names(headers + b"\r\n") == field_names(original)

    # A well-formed header section comes back whole and byte-exact.
    section = original.split(b"\r\n\r\n", 1)[0] + b"\r\n" if original else b""
    lines = section.split(b"\r\n")[:-1]
    well_formed = all(
        re.match(rb"^(?:[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t])", line) or (index == 0 and line.startswith(b"From "))
        for index, line in enumerate(lines)
    )
    if well_formed and not original.startswith(b"\r\n"):
        assert headers == section


# --- inputs that must be refused -----------------------------------------------------


def test_should_bounce() -> None:
    assert should_bounce("sender@example.org", False) is True
    assert should_bounce("", False) is False
    assert should_bounce("<>", False) is False
    assert should_bounce("sender@example.org", True) is False
    assert should_bounce("", True) is False


def test_null_sender_is_refused() -> None:
    with pytest.raises(ValueError):
        make_dsn(sender="")


def test_no_recipients_is_refused() -> None:
    with pytest.raises(ValueError):
        make_dsn([])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reporting_mta": "gw example.com"},
        {"reporting_mta": "gw.example.com\r\nBcc: x@y"},
        {"reporting_mta": ""},
        {"original_queue_id": "A B"},
        {"original_queue_id": "<id>"},
        {"original_sender": "a@b\r\nBcc: x@y"},
        {"postmaster": "pm@x\nBcc: y"},
        {"now": float("nan")},
        {"arrival": float("inf")},
    ],
)
def test_malformed_inputs_are_refused(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "reporting_mta": HOST,
        "original_sender": "s@example.org",
        "original_queue_id": QUEUE_ID,
        "arrival": ARRIVAL,
        "now": NOW,
        "original_message": ORIGINAL,
        "recipients": [FailedRecipient("rcpt@example.net", USER_UNKNOWN, "mx.example.net")],
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        build_dsn(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "reply", "remote_mta", "action"),
    [
        ("a@b", USER_UNKNOWN, None, "bounced"),
        ("a@b", Reply(250, "2.0.0", "Ok"), None, "failed"),
        ("", USER_UNKNOWN, None, "failed"),
        ("a@b\r\nX: y", USER_UNKNOWN, None, "failed"),
        ("a@b", USER_UNKNOWN, "mx\r\nX: y", "failed"),
        ("a@b", USER_UNKNOWN, " ", "failed"),
    ],
)
def test_failed_recipient_validation(address: str, reply: Reply, remote_mta: str | None, action: str) -> None:
    with pytest.raises(ValueError):
        FailedRecipient(address, reply, remote_mta, action)


def test_failed_recipient_defaults_to_failed() -> None:
    assert FailedRecipient("a@b", USER_UNKNOWN, None).action == "failed"


def test_dsn_rate_limit_is_per_address_and_slides() -> None:
    from gateway.relay.dsn_rate import DsnRateLimit

    limit = DsnRateLimit(count=2, period=100.0)
    assert [limit.allow("Victim@Example.org", t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
    assert limit.allow("other@example.org", 2.0)
    assert not limit.allow("victim@example.org", 99.0)
    assert limit.allow("victim@example.org", 100.5)  # the first one has left the window


def test_header_limit_cuts_the_returned_headers_at_a_line() -> None:
    from gateway.relay.bounce import extract_headers

    message = b"".join(b"X-%03d: %s\r\n" % (n, b"v" * 40) for n in range(200)) + b"\r\nbody\r\n"
    cut = extract_headers(message, 1000)
    assert len(cut) <= 1000 and cut.endswith(b"\r\n") and message.startswith(cut)
