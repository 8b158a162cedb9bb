"""gateway.reply: the Reply invariant (RFC 3463 class == RFC 5321 class), the catalogue, remote replies."""

from __future__ import annotations

import pytest

import gateway.reply
from gateway.reply import Reply, parse_reply_line, queued

CATALOGUE = sorted((name, value) for name, value in vars(gateway.reply).items() if isinstance(value, Reply))


def test_catalogue_is_not_empty() -> None:
    # Guards the parametrization below against silently testing nothing.
    names = {name for name, _ in CATALOGUE}
    assert {"OK", "RELAY_DENIED", "INTERNAL_ERROR", "TEMP_POLICY_FAILURE", "SPOOL_FULL"} <= names
    assert len(CATALOGUE) >= 15


@pytest.mark.parametrize(("name", "reply"), CATALOGUE, ids=[name for name, _ in CATALOGUE])
def test_catalogue_reply_class_digits_match(name: str, reply: Reply) -> None:
    enhanced_class, subject, detail = reply.status.split(".")
    assert int(enhanced_class) == reply.code // 100
    assert reply.code // 100 in (2, 4, 5)
    assert subject.isdigit() and detail.isdigit()
    assert "\r" not in reply.text and "\n" not in reply.text and reply.text
    # str() is the wire form and parses back to the same reply.
    assert parse_reply_line(str(reply)) == reply


def test_catalogue_specific_codes() -> None:
    assert str(gateway.reply.RELAY_DENIED) == "554 5.7.1 Relay access denied"
    assert str(gateway.reply.INTERNAL_ERROR).startswith("451 4.3.0 ")
    assert str(gateway.reply.TEMP_POLICY_FAILURE).startswith("451 4.7.1 ")
    assert str(gateway.reply.SPOOL_FULL).startswith("452 4.3.1 ")
    assert str(gateway.reply.MESSAGE_TOO_BIG).startswith("552 5.3.4 ")


def test_queued_reply() -> None:
    reply = queued("0123456789ABCDEF012")
    assert str(reply) == "250 2.0.0 Ok: queued as 0123456789ABCDEF012"
    assert reply.is_success and not reply.is_transient and not reply.is_permanent


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (450, "5.7.1"),
        (550, "4.7.1"),
        (250, "5.0.0"),
        (550, "2.0.0"),
        (421, "2.0.0"),
    ],
)
def test_mismatched_class_is_refused(code: int, status: str) -> None:
    with pytest.raises(ValueError, match="does not match"):
        Reply(code, status, "text")


@pytest.mark.parametrize("code", [354, 334, 300, 199, 100, 600, 0, -250, 1000])
def test_codes_outside_2xx_4xx_5xx_are_refused(code: int) -> None:
    with pytest.raises(ValueError, match="not 2xx, 4xx or 5xx"):
        Reply(code, f"{abs(code) // 100 % 10}.0.0", "text")


@pytest.mark.parametrize("status", ["5.7", "5.7.1.1", "5.7.x", "5..1", "3.0.0", "5.7.1234", "", " 5.7.1", "5.7.1 "])
def test_malformed_status_is_refused(status: str) -> None:
    with pytest.raises(ValueError):
        Reply(550, status, "text")


# Regression: a status regex ending in '$' also matched before a trailing newline.
def test_status_with_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError):
        Reply(550, "5.7.1\n", "text")


@pytest.mark.parametrize("text", ["two\r\nlines", "bare\nlf", "bare\rcr", "end\n", "\r"])
def test_text_with_cr_or_lf_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="single line"):
        Reply(550, "5.7.1", text)


def test_predicates() -> None:
    assert Reply(250, "2.1.5", "Ok").is_success
    transient = Reply(451, "4.4.1", "later")
    assert transient.is_transient and not transient.is_permanent and not transient.is_success
    permanent = Reply(550, "5.1.1", "no")
    assert permanent.is_permanent and not permanent.is_transient and not permanent.is_success


def test_dict_round_trip() -> None:
    reply = Reply(452, "4.3.1", "Insufficient system storage: ü")
    data = reply.to_dict()
    assert data == {"code": 452, "status": "4.3.1", "text": "Insufficient system storage: ü"}
    assert Reply.from_dict(data) == reply


def test_from_dict_validates() -> None:
    with pytest.raises(ValueError):
        Reply.from_dict({"code": 450, "status": "5.7.1", "text": "x"})
    with pytest.raises(KeyError):
        Reply.from_dict({"code": 450, "status": "4.7.1"})


# ---- from_remote


def test_from_remote_takes_enhanced_code_from_text() -> None:
    reply = Reply.from_remote(550, "5.1.1 <nobody@example.net>: Recipient address rejected")
    assert reply == Reply(550, "5.1.1", "<nobody@example.net>: Recipient address rejected")


def test_from_remote_without_enhanced_code_uses_class_zero_zero() -> None:
    assert Reply.from_remote(550, "mailbox unavailable") == Reply(550, "5.0.0", "mailbox unavailable")
    assert Reply.from_remote(421, "too busy") == Reply(421, "4.0.0", "too busy")
    assert Reply.from_remote(250, "Ok") == Reply(250, "2.0.0", "Ok")


def test_from_remote_mismatched_class_is_not_trusted() -> None:
    # A 550 saying "4.7.1" must not produce "550 4.7.1"; the text is kept as said.
    reply = Reply.from_remote(550, "4.7.1 try later")
    assert reply.code == 550 and reply.status == "5.0.0"
    assert reply.text == "4.7.1 try later"
    reply = Reply.from_remote(451, "5.7.1 denied")
    assert (reply.code, reply.status, reply.text) == (451, "4.0.0", "5.7.1 denied")


def test_from_remote_multi_line_is_joined() -> None:
    reply = Reply.from_remote(550, "5.7.1 Message rejected\r\nsee https://example.net/why\n\n  last line  ")
    assert reply.code == 550 and reply.status == "5.7.1"
    assert reply.text == "Message rejected / see https://example.net/why / last line"
    assert "\r" not in str(reply) and "\n" not in str(reply)


def test_from_remote_empty_text() -> None:
    assert Reply.from_remote(250, "") == Reply(250, "2.0.0", "(no text)")
    assert Reply.from_remote(550, "\r\n \n") == Reply(550, "5.0.0", "(no text)")


def test_from_remote_code_only_enhanced_status_keeps_it_as_text() -> None:
    reply = Reply.from_remote(550, "5.2.2")
    assert reply.status == "5.2.2" and reply.text == "5.2.2"


@pytest.mark.parametrize("code", [354, 334, 199, 100, 600, 999, 0, -1])
def test_from_remote_weird_codes_become_transient(code: int) -> None:
    reply = Reply.from_remote(code, "5.7.1 something\nelse")
    assert reply.code == 451 and reply.status == "4.5.0"
    assert reply.is_transient
    assert reply.text == f"unexpected reply code {code}: 5.7.1 something / else"


def test_from_remote_weird_code_text_is_bounded() -> None:
    reply = Reply.from_remote(600, "x" * 2000)
    assert reply.code == 451 and len(reply.text) == 400


# Regression: '5.7.1000' used to be read as status 5.7.100 with text '0 ...'.
def test_from_remote_overlong_detail_is_not_split() -> None:
    reply = Reply.from_remote(550, "5.7.1000 rejected")
    assert reply.status == "5.0.0"
    assert reply.text == "5.7.1000 rejected"


# ---- parse_reply_line


def test_parse_reply_line() -> None:
    assert parse_reply_line("550 5.7.1 Relay access denied") == Reply(550, "5.7.1", "Relay access denied")
    assert parse_reply_line("250-2.0.0 continued") == Reply(250, "2.0.0", "continued")
    assert parse_reply_line("451 4.3.0 ") == Reply(451, "4.3.0", "")


@pytest.mark.parametrize(
    "line",
    [
        "550 Relay access denied",  # no enhanced code
        "450 5.7.1 mismatched",  # class differs
        "550 4.7.1 mismatched",
        "354 End data with <CR><LF>.<CR><LF>",
        "354 3.0.0 intermediate",
        "220 localhost ESMTP",
        "550 5.7.1",  # no separator before the (empty) text
        "5505.7.1 x",
        "",
        "550 5.7 short",
        "550 5.7.1 two\r\nlines",
    ],
)
def test_parse_reply_line_without_valid_enhanced_code(line: str) -> None:
    assert parse_reply_line(line) is None
