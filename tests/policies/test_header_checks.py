"""policies.header_checks: Postfix header_checks(5) with a regexp_table(5) rules file."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from pathlib import Path

import pytest

from gateway.config import build
from gateway.envelope import ClientInfo, Envelope
from gateway.errors import ConfigError
from gateway.message import apply_edits, header_end, raw_fields
from gateway.pipeline.policy import PolicyContext
from gateway.reply import Reply
from gateway.verdict import CONTINUE, Action, HeaderEdit, Verdict
from policies.header_checks import HeaderChecks
from tests.harness.samples import CORPUS, CORPUS_FILES

QUEUE_ID = "4AB1C2D3E4F"

RECEIVED_MX = (
    b"Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n"
    b"\tby gw.example.com with ESMTP; Mon, 1 Jan 2024 10:00:00 +0000"
)
RECEIVED_LAPTOP = (
    b"Received: from laptop (unknown [10.1.2.3])\r\n\tby mx.example.org with ESMTPSA; Mon, 1 Jan 2024 09:59:59 +0000"
)
MESSAGE = (
    RECEIVED_MX + b"\r\n" + RECEIVED_LAPTOP + b"\r\n" + b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: Quarterly report\r\n"
    b" for 2024\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"X-Mailer: Bulk Sender 3000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Subject: a body line that looks like a header\r\n"
    b"X-Mailer: also in the body\r\n"
    b"Hello Bob.\r\n"
)


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def make(tmp_path: Path, rules: str, **extra: object) -> HeaderChecks:
    path = tmp_path / "header_checks"
    path.write_text(rules)
    return HeaderChecks(build({"header_checks": {"file": str(path), **extra}}))


def context() -> PolicyContext:
    client = ClientInfo(ipaddress.ip_address("192.0.2.10"), 40000, "smtp", helo="client.example.org")
    return PolicyContext(client=client, envelope=Envelope("alice@example.org", ["bob@example.com"]), queue_id=QUEUE_ID)


def check(policy: HeaderChecks, message: bytes = MESSAGE) -> Verdict:
    return asyncio.run(policy.on_data(context(), message))


def body(raw: bytes) -> bytes:
    return raw[header_end(raw) :]


# --- each action on a real message -----------------------------------------------------


def test_reject_default_reply(tmp_path: Path) -> None:
    verdict = check(make(tmp_path, "/^Subject:.*report/ REJECT\n"))
    assert verdict.action is Action.REJECT
    assert verdict.reply == Reply(550, "5.7.1", "message content rejected")
    assert verdict.reason == "header_checks"
    assert "Subject: Quarterly report for 2024" in verdict.detail
    assert ":1" in verdict.detail  # the rule's file:line


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        ("REJECT 5.7.0 no reports please", Reply(550, "5.7.0", "no reports please")),
        ("REJECT go away", Reply(550, "5.7.1", "go away")),
        ("reject 5.7.9", Reply(550, "5.7.9", "message content rejected")),
        ("REJECT 5.7.1 subject '$1' refused", Reply(550, "5.7.1", "subject 'Quarterly' refused")),
        ("REJECT $2 is not wanted", Reply(550, "5.7.1", "report is not wanted")),
        ("REJECT cost $$5 for ${1}X", Reply(550, "5.7.1", "cost $5 for QuarterlyX")),
    ],
)
def test_reject_custom_code_and_text(tmp_path: Path, action: str, reply: Reply) -> None:
    verdict = check(make(tmp_path, f"/^Subject: (\\w+) (\\w+)/ {action}\n"))
    assert verdict.action is Action.REJECT
    assert verdict.reply == reply


def test_discard(tmp_path: Path) -> None:
    verdict = check(make(tmp_path, "/^X-Mailer: .*bulk/ DISCARD bulk mail\n"))
    assert verdict.action is Action.DISCARD
    assert verdict.reason == "header_checks"
    assert "X-Mailer: Bulk Sender 3000" in verdict.detail and "bulk mail" in verdict.detail


def test_hold_keeps_edits_and_later_headers_still_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = "/^Received: from laptop/ HOLD internal relay\n/^X-Mailer:/ IGNORE\n/^Message-ID:/ WARN seen after hold\n"
    with caplog.at_level(logging.INFO):
        verdict = check(make(tmp_path, rules))
    assert verdict.action is Action.HOLD
    assert "Received: from laptop" in verdict.detail and "internal relay" in verdict.detail
    assert verdict.headers.drop == (b"X-Mailer: Bulk Sender 3000",)
    assert any("seen after hold" in r.getMessage() for r in caplog.records)


def test_reject_after_hold_wins_and_reject_stops_processing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = "/^Received:/ HOLD\n/^Subject:/ REJECT 5.7.1 no\n/^X-Mailer:/ WARN never logged\n"
    with caplog.at_level(logging.INFO):
        verdict = check(make(tmp_path, rules))
    assert verdict.action is Action.REJECT
    assert not any("never logged" in r.getMessage() for r in caplog.records)


def test_discard_stops_before_a_later_reject(tmp_path: Path) -> None:
    rules = "/^From:/ DISCARD\n/^Subject:/ REJECT\n"
    assert check(make(tmp_path, rules)).action is Action.DISCARD


def test_ignore_removes_exactly_one_of_two_received(tmp_path: Path) -> None:
    verdict = check(make(tmp_path, "/^Received: from laptop/ IGNORE\n"))
    assert verdict.action is Action.CONTINUE
    assert verdict.reason == "header_checks"
    assert verdict.headers == HeaderEdit(drop=(RECEIVED_LAPTOP,))
    edited = apply_edits(MESSAGE, b"", (verdict.headers,))
    assert edited == MESSAGE.replace(RECEIVED_LAPTOP + b"\r\n", b"")
    assert RECEIVED_MX in edited
    assert body(edited) == body(MESSAGE)


def test_ignore_each_of_several_identical_fields(tmp_path: Path) -> None:
    message = b"X-Dup: same\r\nX-Dup: same\r\nSubject: hi\r\n\r\nX-Dup: same\r\n"
    verdict = check(make(tmp_path, "/^X-Dup:/ IGNORE\n"), message)
    assert verdict.headers.drop == (b"X-Dup: same", b"X-Dup: same")
    assert apply_edits(message, b"", (verdict.headers,)) == b"Subject: hi\r\n\r\nX-Dup: same\r\n"


def test_warn_logs_queue_id_and_header(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        verdict = check(make(tmp_path, "/^Subject:/ WARN subject seen\n"))
    assert verdict.action is Action.CONTINUE
    assert verdict.headers == HeaderEdit()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert line.startswith(f"{QUEUE_ID}: warning: header Subject: Quarterly report for 2024")
    # the client as Postfix logs an unverified one; its HELO name only in helo=<...>
    assert "from unknown[192.0.2.10]:40000; from=<alice@example.org>" in line
    assert "helo=<client.example.org>" in line
    assert line.endswith(": subject seen")


def test_prepend_adds_a_field(tmp_path: Path) -> None:
    verdict = check(make(tmp_path, "/^X-Mailer: (\\S+)/ PREPEND X-Bulk-Mailer: $1 detected\n"))
    assert verdict.action is Action.CONTINUE
    assert verdict.headers.prepend == (("X-Bulk-Mailer", "Bulk detected"),)
    edited = apply_edits(MESSAGE, b"", (verdict.headers,))
    assert edited == b"X-Bulk-Mailer: Bulk detected\r\n" + MESSAGE


def test_info_is_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        verdict = check(make(tmp_path, "/^To:/ INFO recipient header\n"))
    assert verdict.action is Action.CONTINUE
    assert any(r.levelno == logging.INFO and "recipient header" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("stop", ["DUNNO", "OK", "dunno with ignored text"])
def test_dunno_and_ok_stop_further_rules_for_that_header(tmp_path: Path, stop: str) -> None:
    rules = f"/^Subject:.*report/ {stop}\n/^Subject:/ REJECT\n/^X-Mailer:/ IGNORE\n"
    verdict = check(make(tmp_path, rules))
    assert verdict.action is Action.CONTINUE
    # The other header's rule still applies.
    assert verdict.headers.drop == (b"X-Mailer: Bulk Sender 3000",)


def test_no_match_is_plain_continue(tmp_path: Path) -> None:
    assert check(make(tmp_path, "/^X-Nothing:/ REJECT\n")) is CONTINUE


def test_body_and_mime_part_headers_are_not_checked(tmp_path: Path) -> None:
    rules = "/^Subject: a body line/ REJECT\n/^X-Mailer: also/ REJECT\n/^Content-Type: image/ REJECT\n"
    mime = (
        b"Subject: pic\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: image/png\r\n\r\nxx\r\n--b--\r\n"
    )
    policy = make(tmp_path, rules)
    assert check(policy).action is Action.CONTINUE
    assert check(policy, mime).action is Action.CONTINUE


# --- matching rules ----------------------------------------------------------------------


def test_folded_header_is_matched_unfolded(tmp_path: Path) -> None:
    verdict = check(make(tmp_path, "/^Subject: Quarterly report for 2024$/ REJECT\n"))
    assert verdict.action is Action.REJECT


def test_ignore_drops_a_folded_field_with_its_continuation_lines(tmp_path: Path) -> None:
    verdict = check(make(tmp_path, "/^Subject:/ IGNORE\n"))
    assert verdict.headers.drop == (b"Subject: Quarterly report\r\n for 2024",)
    edited = apply_edits(MESSAGE, b"", (verdict.headers,))
    assert b"for 2024" not in edited[: header_end(edited)]
    assert body(edited) == body(MESSAGE)


@pytest.mark.parametrize(
    ("rule", "matches"),
    [
        ("/^subject: quarterly/ REJECT", True),  # case-insensitive by default
        ("/^SUBJECT: QUARTERLY/ REJECT", True),
        ("/^subject: quarterly/i REJECT", False),  # i toggles to case-sensitive
        ("/^Subject: Quarterly/i REJECT", True),
        ("/^subject: quarterly/ii REJECT", True),  # toggled twice
        ("/^Subject: Quarterly$/m REJECT", False),  # m: no embedded newlines after unfolding
    ],
)
def test_case_sensitivity_flag(tmp_path: Path, rule: str, matches: bool) -> None:
    verdict = check(make(tmp_path, rule + "\n"))
    assert (verdict.action is Action.REJECT) is matches


def test_negated_rule(tmp_path: Path) -> None:
    message = b"Subject: hi\r\nX-Empty:\r\nFrom: a@example.org\r\n\r\nbody\r\n"
    policy = make(tmp_path, "!/^[^:]+: ./ REJECT 5.7.1 empty header field\n")
    verdict = check(policy, message)
    assert verdict.action is Action.REJECT
    assert verdict.reply == Reply(550, "5.7.1", "empty header field")
    assert "X-Empty:" in verdict.detail
    assert check(policy).action is Action.CONTINUE


def test_double_negation_and_legacy_second_pattern(tmp_path: Path) -> None:
    assert check(make(tmp_path, "!!/^Subject:/ REJECT\n")).action is Action.REJECT
    rules = "/^Received:/!/laptop/ IGNORE\n"  # Received but not from the laptop
    verdict = check(make(tmp_path, rules))
    assert verdict.headers.drop == (RECEIVED_MX,)


@pytest.mark.parametrize(
    "rule",
    [
        "%^Subject: .*/?report% REJECT",
        "|^Subject: Quarterly| REJECT",
        "@^Subject: [a-z]+ report@ REJECT",
        "!#^X-Nothing#  REJECT",  # negated: '#' cannot start a rule, '!#' can
        "!%^Received:%i REJECT",
        r"/^Subject: Quarterly\/? report/ REJECT",  # escaped delimiter
        r",^Subject: (Quarterly\, )?Quarterly, REJECT",
    ],
)
def test_alternative_delimiters(tmp_path: Path, rule: str) -> None:
    assert check(make(tmp_path, rule + "\n")).action is Action.REJECT


def test_hash_at_line_start_is_a_comment_as_in_postfix(tmp_path: Path) -> None:
    policy = make(tmp_path, "#^Subject:# REJECT\n")
    assert policy.rules == ()
    assert check(policy) is CONTINUE


def test_posix_classes_and_word_anchors(tmp_path: Path) -> None:
    assert (
        check(make(tmp_path, "/^Subject:[[:space:]]+[[:upper:]][[:alpha:]]+ report/i REJECT\n")).action is Action.REJECT
    )
    assert check(make(tmp_path, r"/\<report\>/ REJECT" + "\n")).action is Action.REJECT
    assert check(make(tmp_path, r"/\<repo\>/ REJECT" + "\n")).action is Action.CONTINUE


def test_if_endif(tmp_path: Path) -> None:
    rules = "if /^Received:/\n/laptop/ IGNORE\nendif\nif !/^Received:/\n/laptop/ REJECT\nendif\n"
    verdict = check(make(tmp_path, rules))
    assert verdict.action is Action.CONTINUE
    assert verdict.headers.drop == (RECEIVED_LAPTOP,)


def test_comments_blank_lines_and_continuation_lines(tmp_path: Path) -> None:
    rules = (
        "# header_checks for the test\n"
        "\n"
        "   # an indented comment\n"
        "/^Subject:.*report/ REJECT 5.7.1 reports are\n"
        "# a comment inside a logical line does not end it\n"
        "\n"
        "    not accepted here\n"
        "/^X-Mailer:/\n"
        "\tIGNORE\n"
    )
    policy = make(tmp_path, rules)
    assert [(rule.line, rule.action) for rule in policy.rules] == [(4, "REJECT"), (8, "IGNORE")]
    verdict = check(policy)
    # Postfix appends a continuation line verbatim (its leading blanks included).
    assert verdict.reply == Reply(550, "5.7.1", "reports are    not accepted here")


def test_crlf_rules_file(tmp_path: Path) -> None:
    assert check(make(tmp_path, "# c\r\n/^Subject:/ REJECT 5.7.1 no\r\n")).reply == Reply(550, "5.7.1", "no")


def test_non_utf8_header_bytes_do_not_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    message = b"Subject: caf\xe9 \xff\xfe deal\r\nX-Raw: \xc3\x28\r\n\r\nbody \xff\r\n"
    with caplog.at_level(logging.INFO):
        warned = check(make(tmp_path, "/^X-Raw:/ WARN raw\n/^Subject: (.*)/ PREPEND X-Seen: $1\n"), message)
        verdict = check(make(tmp_path, "/^Subject: caf(.*) deal/ REJECT 5.7.1 got $1\n"), message)
    assert warned.action is Action.CONTINUE
    assert warned.headers.prepend == (("X-Seen", "caf\udce9 \udcff\udcfe deal"),)
    assert apply_edits(message, b"", (warned.headers,)).startswith(b"X-Seen: caf\xe9 \xff\xfe deal\r\n")
    assert verdict.action is Action.REJECT
    assert verdict.reply is not None and verdict.reply.text == "got ? ??"
    assert all(r.getMessage().isprintable() for r in caplog.records)


def test_prepend_from_substitution_that_is_not_a_field_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        verdict = check(make(tmp_path, "/^Subject: (\\w+)/ PREPEND $1\n"))
    assert verdict.headers.prepend == ()
    assert any("bad PREPEND" in r.getMessage() for r in caplog.records)


def test_reload(tmp_path: Path) -> None:
    policy = make(tmp_path, "/^Subject:/ REJECT\n")
    assert check(policy).action is Action.REJECT
    policy.path.write_text("/^Subject:/ HOLD\n/^From:/ WARN x\n")
    assert policy.load() == 2
    assert check(policy).action is Action.HOLD
    policy.path.write_text("/^Subject:/ BOGUS\n")
    with pytest.raises(ConfigError):
        policy.load()
    assert check(policy).action is Action.HOLD  # a failed reload keeps the old table


# --- configuration ---------------------------------------------------------------------


def test_settings(tmp_path: Path) -> None:
    policy = make(tmp_path, "/x/ DUNNO\n", timeout="5s", on_error="pass")
    assert (policy.name, policy.timeout, policy.on_error) == ("header_checks", 5.0, "pass")
    default = make(tmp_path, "/x/ DUNNO\n")
    assert default.on_error == "tempfail" and default.timeout > 0


def test_regexp_prefix_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "hc").write_text("/^Subject:/ DISCARD\n")
    policy = HeaderChecks(build({"header_checks": {"file": f"regexp:{tmp_path / 'hc'}"}}))
    assert check(policy).action is Action.DISCARD


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({}, "header_checks.file"),
        ({"file": ""}, "header_checks.file"),
        ({"file": 42}, "header_checks.file"),
        ({"file": "/nonexistent/header_checks"}, "header_checks.file"),
        ({"file": "FILE", "timeout": "soon"}, "header_checks.timeout"),
        ({"file": "FILE", "timeout": 0}, "header_checks.timeout"),
        ({"file": "FILE", "on_error": "ignore"}, "header_checks.on_error"),
        ({"file": "FILE", "pattern": "/x/"}, "header_checks.pattern"),
    ],
)
def test_bad_settings(tmp_path: Path, table: dict[str, object], key: str) -> None:
    (tmp_path / "hc").write_text("/x/ DUNNO\n")
    table = {k: str(tmp_path / "hc") if v == "FILE" else v for k, v in table.items()}
    with pytest.raises(ConfigError) as caught:
        HeaderChecks(build({"header_checks": table}))
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("rules", "line", "message"),
    [
        ("/^Subject:/ FROBNICATE\n", 1, "unknown action"),
        ("# c\n\n/^Subject:/ REPLACE Subject: x\n", 3, "not supported"),
        ("/x/ DUNNO\n/^Subject: (unclosed/ REJECT\n", 2, "bad regular expression"),
        ("/x/ DUNNO\n/x/ DUNNO\n/^Subject: [z-a]/ REJECT\n", 3, "bad regular expression"),
        ("/^Subject: no end REJECT\n", 1, "no closing pattern delimiter"),
        ("/^Subject:/ \n", 1, "no action"),
        ("/^Subject:/q REJECT\n", 1, "unknown pattern flag"),
        ("/^Subject:/x REJECT\n", 1, "flag 'x'"),
        ("/^Subject:/ REJECT 4.7.1 try later\n", 1, "5.x.x"),
        ("/^Subject: (.*)/ REJECT 4.7.1 $1\n", 1, "5.x.x"),
        ("/^Subject:/ REJECT 2.0.0 fine\n", 1, "5.x.x"),
        ("/^Subject:/ REJECT caf\u00e9 refused\n", 1, "printable ASCII"),
        ("/^Subject:/ PREPEND\n", 1, "PREPEND needs"),
        ("/^Subject:/ PREPEND not a header\n", 1, "not a header field"),
        ("/^Subject: (.*)/ REJECT $2\n", 1, "only 1 group"),
        ("!/^Subject: (.*)/ REJECT $1\n", 1, "negated"),
        ("/^Subject:/ REJECT costs $5x\n", 1, "non-numeric"),
        ("/^Subject:/ REJECT costs $ 5\n", 1, "write $$"),
        ("/^Subject:/ REJECT costs $0\n", 1, "out of range"),
        ("REJECT everything\n", 1, "pattern delimiter"),
        ("  /^Subject:/ REJECT\n", 1, "continuation line"),
        ("/x/ DUNNO\nendif\n", 2, "endif without"),
        ("/x/ DUNNO\nif /^Subject:/\n/y/ DUNNO\n", 2, "if without"),
        ("if /^Subject:/ /x/ REJECT\nendif\n", 1, "unexpected text"),
        ("/[[:letters:]]/ REJECT\n", 1, "unknown character class"),
        ("/[[=a=]]/ REJECT\n", 1, "equivalence"),
        ("a/x/ REJECT\n", 1, "pattern delimiter"),
    ],
)
def test_rule_errors_name_file_and_line(tmp_path: Path, rules: str, line: int, message: str) -> None:
    path = tmp_path / "header_checks"
    path.write_text(rules)
    with pytest.raises(ConfigError) as caught:
        HeaderChecks(build({"header_checks": {"file": str(path)}}))
    assert caught.value.key == "header_checks.file"
    assert caught.value.value == f"{path}:{line}"
    assert message in caught.value.allowed


# --- the corpus -----------------------------------------------------------------

REALISTIC_RULES = r"""
# A realistic header_checks table (Postfix regexp: syntax).
/^Subject:.*\b(viagra|cialis|lottery winner)\b/     REJECT 5.7.1 spam subject ($1)
/^Content-(Type|Disposition):.*name[[:space:]]*=[[:space:]]*"?[^"]*\.(exe|scr|pif|bat|com|vbs)"?/
        REJECT 5.7.1 attachments of type .$2 are not accepted
/^X-Spam-Flag:[[:space:]]*YES/                      DISCARD spam flagged upstream
/^X-Mailer:.*(bulk|mass ?mailer)/                   HOLD bulk mailer $1
if /^Received:/
/\[(10|127)\.[0-9.]+\]/                             IGNORE
/\[192\.168\.[0-9.]+\]/                             IGNORE
endif
/^(X-Originating-IP|X-Mailer|User-Agent):/          IGNORE
/^Message-ID:[[:space:]]*$/                         WARN empty Message-ID
/^Message-ID:/                                      DUNNO
/^(To|Cc):.*undisclosed/                            WARN undisclosed recipients
/^Subject:[[:space:]]*$/                            PREPEND X-Empty-Subject: yes
/^Subject: (.{200,})/                               REJECT 5.7.1 subject too long
/^Date:.*(19[0-9][0-9])/                            PREPEND X-Old-Date: $1
!/^[!-9;-~]+:/                                      WARN malformed header
/^MIME-Version:/                                    OK
"""


def corpus_id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def test_corpus_is_present() -> None:
    assert len(CORPUS_FILES) >= 100, f"expected the corpus at {CORPUS}"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=corpus_id)
def test_corpus_message(tmp_path: Path, path: Path) -> None:
    raw = crlf(path.read_bytes())
    verdict = check(make(tmp_path, REALISTIC_RULES), raw)
    assert isinstance(verdict, Verdict)
    if verdict.action is not Action.CONTINUE:
        assert verdict.reason == "header_checks" and verdict.detail
    fields = list(raw_fields(raw))
    for dropped in verdict.headers.drop:
        assert dropped + b"\r\n" in fields
    edited = apply_edits(raw, b"", (verdict.headers,))
    assert body(edited) == body(raw)
    assert len(list(raw_fields(edited))) == (len(fields) - len(verdict.headers.drop) + len(verdict.headers.prepend))


def test_non_field_lines_are_skipped_and_later_fields_checked(tmp_path: Path) -> None:
    message = b"From alice@example.org Mon Jan  1 10:00:00 2024\r\nSubject: hi\r\n\r\nbody\r\n"
    policy = make(tmp_path, "/^From / REJECT\n/^Subject: hi/ HOLD\n")
    assert check(policy, message).action is Action.HOLD


def test_raw_bytes_in_the_rules_file_match_the_same_header_bytes(tmp_path: Path) -> None:
    path = tmp_path / "hc"
    path.write_bytes(b"/^Subject: caf\xe9/ DISCARD\n")
    policy = HeaderChecks(build({"header_checks": {"file": str(path)}}))
    assert check(policy, b"Subject: caf\xe9\r\n\r\nx\r\n").action is Action.DISCARD
    assert check(policy, b"Subject: caf\xc3\xa9\r\n\r\nx\r\n").action is Action.CONTINUE
