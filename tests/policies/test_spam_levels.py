"""policies.spam.levels: amavis-style thresholds, header shapes, Subject rewrite, config errors.

Most tests feed scores directly; the last ones take real scores from the
session's spamd and rspamd (tests/harness/spam_daemons.py) and apply both
engines' header edits to one message, as the pipeline does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any

import pytest

from gateway import config as gateway_config
from gateway.envelope import ClientInfo, Envelope
from gateway.errors import ConfigError
from gateway.message import apply_edits, field_name, field_value, raw_fields
from gateway.pipeline.policy import PolicyContext
from gateway.reply import Reply
from gateway.verdict import CONTINUE, Action, HeaderEdit, Verdict
from policies.spam.levels import SpamLevels, tagged_subject
from policies.spam.rspamd import Rspamd
from policies.spam.spamassassin import SpamAssassin

HAM = (
    b"From: a@example.com\r\nTo: b@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Subject: lunch\r\nMessage-ID: <h@example.com>\r\n\r\nSee you at noon.\r\n"
)
# No Date and no Message-ID: SpamAssassin scores 3.3 (MISSING_DATE, MISSING_MID), rspamd 3.4
# (MISSING_DATE, MISSING_MID, MIME_GOOD); observed with Debian 12's rules, offline.
UNDATED = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: lunch\r\n\r\nSee you at noon.\r\n"
TESTS = ["MISSING_DATE", "MISSING_MID"]


def levels(**table: Any) -> SpamLevels:
    return SpamLevels.from_config(gateway_config.build({"spam_levels": table}))


def headers_of(verdict: Verdict) -> dict[str, str]:
    return dict(verdict.headers.prepend)


def fields(raw: bytes) -> list[tuple[str, str]]:
    return [(field_name(field), field_value(field)) for field in raw_fields(raw)]


# ---- configuration ----


def test_defaults_are_amavis_like():
    assert levels() == SpamLevels(2.0, 6.2, 6.9, "***SPAM*** ", "reject")


def test_all_keys_are_read():
    got = levels(tag_level=-1, tag2_level=4.5, kill_level=10, subject_tag="[spam] ", kill_action="hold")
    assert got == SpamLevels(-1.0, 4.5, 10.0, "[spam] ", "hold")


def test_equal_levels_are_allowed():
    assert levels(tag_level=5, tag2_level=5, kill_level=5).kill_level == 5.0


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"tag_level": "high"}, "spam_levels.tag_level"),
        ({"tag2_level": True}, "spam_levels.tag2_level"),
        ({"kill_level": float("nan")}, "spam_levels.kill_level"),
        ({"subject_tag": 3}, "spam_levels.subject_tag"),
        ({"subject_tag": "[spam]\r\nBcc: x@example.com"}, "spam_levels.subject_tag"),
        ({"kill_action": "discard"}, "spam_levels.kill_action"),
        ({"kill_levle": 9}, "spam_levels.kill_levle"),
        # ordering: tag_level <= tag2_level <= kill_level
        ({"tag_level": 7.0}, "spam_levels.tag_level"),  # above the default tag2 6.2
        ({"tag2_level": 8.0}, "spam_levels.tag2_level"),  # above the default kill 6.9
        ({"kill_level": 5.0}, "spam_levels.kill_level"),  # only kill given: it is the wrong one
        ({"tag2_level": 1.0}, "spam_levels.tag2_level"),  # only tag2 given, below tag 2.0
        ({"tag_level": 3, "tag2_level": 2, "kill_level": 9}, "spam_levels.tag_level"),
        ({"tag_level": 1, "tag2_level": 9, "kill_level": 8}, "spam_levels.tag2_level"),
    ],
)
def test_config_errors_name_the_key(table, key):
    with pytest.raises(ConfigError) as caught:
        levels(**table)
    assert caught.value.key == key
    assert key in str(caught.value)


def test_scanner_policies_validate_spam_levels_too():
    for make in (SpamAssassin, Rspamd):
        with pytest.raises(ConfigError) as caught:
            make(gateway_config.build({"spam_levels": {"kill_action": "bounce"}}))
        assert caught.value.key == "spam_levels.kill_action"


# ---- verdicts by score ----


def test_kill_level_rejects():
    verdict = levels().verdict(engine="spamassassin", score=6.9, tests=["GTUBE"], message=HAM)
    assert verdict.action is Action.REJECT
    assert verdict.reply == Reply(550, "5.7.1", "Message rejected as spam")
    assert verdict.reason == "spam"
    assert "GTUBE" in verdict.detail and "6.900" in verdict.detail


def test_kill_action_hold_holds_and_keeps_the_marking():
    verdict = levels(kill_action="hold").verdict(engine="rspamd", score=15.0, tests=["GTUBE"], message=HAM)
    assert verdict.action is Action.HOLD and verdict.reply is None and verdict.reason == "spam"
    assert headers_of(verdict)["X-Spam-Flag"] == "YES"


def test_tag2_level_marks_as_spam_and_tags_the_subject():
    verdict = levels().verdict(engine="rspamd", score=6.2, tests=["B_RULE", "A_RULE"], message=HAM)
    assert verdict.action is Action.CONTINUE
    assert verdict.headers.prepend == (
        ("X-Spam-Flag", "YES"),
        ("X-Spam-Score", "6.200"),
        ("X-Spam-Status", "Yes, score=6.200 tag=2 tag2=6.2 kill=6.9 engine=rspamd\r\n tests=[B_RULE, A_RULE]"),
    )
    assert verdict.headers.replace == (("Subject", "***SPAM*** lunch"),)


def test_tag_level_adds_status_with_no():
    verdict = levels().verdict(engine="spamassassin", score=2.0, tests=TESTS, message=HAM)
    assert verdict.action is Action.CONTINUE
    assert headers_of(verdict) == {
        "X-Spam-Flag": "NO",
        "X-Spam-Score": "2.000",
        "X-Spam-Status": "No, score=2.000 tag=2 tag2=6.2 kill=6.9 engine=spamassassin\r\n"
        " tests=[MISSING_DATE, MISSING_MID]",
    }
    assert verdict.headers.replace == ()


@pytest.mark.parametrize("score", [1.999, 0.0, -0.0, -5.0])
def test_below_tag_level_is_plain_continue(score):
    assert levels().verdict(engine="rspamd", score=score, tests=TESTS, message=HAM) == CONTINUE


def test_negative_zero_is_printed_as_zero():
    verdict = levels(tag_level=-1).verdict(engine="spamassassin", score=-0.0, tests=[], message=HAM)
    assert headers_of(verdict)["X-Spam-Score"] == "0.000"
    assert "score=0.000" in headers_of(verdict)["X-Spam-Status"]


def test_empty_subject_tag_leaves_the_subject_alone():
    verdict = levels(subject_tag="").verdict(engine="rspamd", score=6.5, tests=[], message=HAM)
    assert verdict.headers.replace == () and headers_of(verdict)["X-Spam-Flag"] == "YES"


# ---- header shapes ----


def test_long_status_is_folded_at_spaces_and_unfolds_to_one_line():
    tests = [f"SOME_QUITE_LONG_RULE_NAME_{i}" for i in range(40)]
    verdict = levels().verdict(engine="spamassassin", score=6.5, tests=tests, message=HAM)
    out = apply_edits(HAM, b"", (verdict.headers,))
    status = next(field for field in raw_fields(out) if field_name(field) == "x-spam-status")
    lines = status.split(b"\r\n")[:-1]
    assert len(lines) > 5 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    assert field_value(status) == (
        "Yes, score=6.500 tag=2 tag2=6.2 kill=6.9 engine=spamassassin tests=[" + ", ".join(tests) + "]"
    )


def test_rule_names_cannot_inject_header_lines():
    verdict = levels().verdict(engine="rspamd", score=6.5, tests=["OK_RULE", "EVIL\r\nBcc: x@example.com"], message=HAM)
    status = headers_of(verdict)["X-Spam-Status"]
    assert all(line.startswith(" ") for line in status.split("\r\n")[1:])  # only folds, no new field
    assert "tests=[OK_RULE, EVILBcc:xexample.com]" in status.replace("\r\n", "")


# ---- Subject rewrite ----


def test_encoded_words_and_folding_of_the_subject_are_kept():
    message = (
        b"From: a@example.com\r\nSubject: =?UTF-8?B?TMO8bmNo?= und\r\n =?UTF-8?Q?K=C3=A4se?=\r\n"
        b"To: b@example.org\r\n\r\nbody\r\n"
    )
    verdict = levels().verdict(engine="rspamd", score=6.5, tests=[], message=message)
    out = apply_edits(message, b"", (verdict.headers,))
    assert b"Subject: ***SPAM*** =?UTF-8?B?TMO8bmNo?= und\r\n =?UTF-8?Q?K=C3=A4se?=\r\nTo: b@example.org" in out
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_subject_keeps_its_place_and_only_the_first_is_tagged():
    message = b"From: a@example.com\r\nSubject: one\r\nTo: b@example.org\r\nSubject: two\r\n\r\nbody\r\n"
    out = apply_edits(message, b"", (levels().verdict(engine="x", score=6.5, tests=[], message=message).headers,))
    assert fields(out)[3:] == [
        ("from", "a@example.com"),
        ("subject", "***SPAM*** one"),
        ("to", "b@example.org"),
        ("subject", "two"),
    ]


def test_missing_subject_is_created():
    message = b"From: a@example.com\r\nTo: b@example.org\r\n\r\nbody\r\n"
    verdict = levels(subject_tag="[SPAM] ").verdict(engine="rspamd", score=6.5, tests=[], message=message)
    assert verdict.headers.replace == (("Subject", "[SPAM]"),)
    assert ("subject", "[SPAM]") in fields(apply_edits(message, b"", (verdict.headers,)))


def test_raw_8bit_subject_survives_byte_for_byte():
    message = "From: a@example.com\r\nSubject: Grüße\r\n\r\nbody\r\n".encode("latin-1")
    subject = tagged_subject(message, "***SPAM*** ")
    out = apply_edits(message, b"", (HeaderEdit(replace=(("Subject", subject),)),))
    assert b"Subject: ***SPAM*** Gr\xfc\xdfe\r\n" in out


# ---- with the real engines ----


def _ctx() -> PolicyContext:
    client = ClientInfo(ipaddress.ip_address("127.0.0.1"), 40000, "smtp", helo="client.example.com")
    return PolicyContext(client, Envelope("a@example.com", ["b@example.org"]), queue_id="LEVELSTEST")


def test_both_engines_mark_the_same_message_and_subject_is_tagged_once(spamd, rspamd):
    """Levels around the observed scores (SpamAssassin 3.3, rspamd 3.4): tag 1, tag2 2, kill 10
    (rspamd keeps its own levels in [rspamd])."""
    levels = {"tag_level": 1.0, "tag2_level": 2.0, "kill_level": 10.0}
    table = {"spam_levels": levels, "spamassassin": {"address": spamd.address}, "rspamd": {"url": rspamd.url, **levels}}
    config = gateway_config.build(table)

    async def both() -> list[Verdict]:
        policies = [SpamAssassin(config), Rspamd(config)]
        try:
            return list(await asyncio.gather(*(p.on_data(_ctx(), UNDATED) for p in policies)))
        finally:
            for policy in policies:
                await policy.aclose()

    verdicts = asyncio.run(both())
    assert [v.action for v in verdicts] == [Action.CONTINUE, Action.CONTINUE]
    out = apply_edits(UNDATED, b"", tuple(v.headers for v in verdicts))
    found = fields(out)
    statuses = [value for name, value in found if name == "x-spam-status"]
    assert [re.search(r"engine=(\w+)", s).group(1) for s in statuses] == ["spamassassin", "rspamd"]
    assert all(s.startswith("Yes, ") and "MISSING_DATE" in s for s in statuses)
    assert [v for n, v in found if n == "x-spam-flag"] == ["YES", "YES"]
    scores = [float(v) for n, v in found if n == "x-spam-score"]
    assert all(2.0 <= s < 10.0 for s in scores), scores
    assert [v for n, v in found if n == "subject"] == ["***SPAM*** lunch"]
    assert out.endswith(b"\r\n\r\nSee you at noon.\r\n")
