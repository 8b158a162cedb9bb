"""policies.spam.rspamd against a real rspamd on loopback (tests/harness/spam_daemons.py).

The session's ``rspamd`` fixture serves the scans (offline, loopback DNS only).
Messages are sent with ``IP: 127.0.0.1`` so rspamd skips its DNS-based checks
(SPF/DKIM/DMARC/HFILTER; shared/test-peers.md §3). The harness loads two
test-only rules: ``GATEWAY_TEST_ENVELOPE`` echoes the envelope headers rspamd
received, and a ``X-Gateway-Test-Action: <action>`` message header forces that
action, so "soft reject" and "rewrite subject" (no default threshold produces
them) come from the real daemon too. The stop/restart test uses a private
:class:`RspamdDaemon`; an aiohttp stand-in covers answers rspamd never gives.

Observed (rspamd 3.4, Debian 12 config): GTUBE → action ``reject``, score 15,
``messages.smtp_message`` "Gtube pattern"; the dated ham 0.9 (DATE_IN_PAST 1.0,
MIME_GOOD -0.1, ``no action``); the same ham without Date and Message-ID 3.4
(MISSING_MID 2.5, MISSING_DATE 1.0, MIME_GOOD -0.1, ``no action``).
"""

from __future__ import annotations

import asyncio
import email
import email.header
import email.policy
import email.utils
import ipaddress
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway import config as gateway_config
from gateway.envelope import ClientInfo, Envelope
from gateway.errors import ConfigError, ScannerError
from gateway.message import apply_edits, field_name, field_value, raw_fields
from gateway.pipeline.policy import PolicyContext
from gateway.reply import SPAM_SOFT_REJECT, Reply
from gateway.verdict import CONTINUE, Action, Verdict
from policies.spam.rspamd import Rspamd
from tests.harness.ports import free_ports
from tests.harness.samples import (  # noqa: F401
    CORPUS,
    CORPUS_FILES,
    GTUBE,
    GTUBE_MAIL,
    HAM,
    HEADER,
    UNDATED,
)
from tests.harness.spam_daemons import RspamdDaemon

# Corpus messages rspamd scores at or above 6.9, the amavis kill level (calibrated for
# SpamAssassin), with the symbol that weighs most. They are parser test cases with broken
# headers. rspamd's default levels here follow its own scale (kill 15), where all pass;
# with kill_level = 6.9 set in [rspamd] exactly these are rejected.
CORPUS_SPAM = {
    "mail-gem/attachment_emails/attachment_message_rfc822.eml": "BROKEN_HEADERS",  # 7.9
    "mail-gem/attachment_emails/attachment_message_rfc822_inline_image.eml": "BROKEN_HEADERS",  # 7.9
    "mail-gem/attachment_emails/attachment_pdf_non_ascii.eml": "R_BAD_CTE_7BIT",  # 7.0
    "mail-gem/attachment_emails/attachment_pdf_non_ascii_lf.eml": "R_BAD_CTE_7BIT",  # 7.0
    "mail-gem/error_emails/bad_encoded_subject.eml": "MISSING_FROM",  # 9.2
    "mail-gem/error_emails/bad_subject.eml": "FROM_EXCESS_BASE64",  # 10.5
    "mail-gem/error_emails/content_transfer_encoding_empty.eml": "R_BAD_CTE_7BIT",  # 8.1
    "mail-gem/error_emails/empty_group_lists.eml": "SPAM_FLAG",  # 9.0
    "mail-gem/error_emails/missing_body.eml": "BROKEN_HEADERS",  # 10.0
    "mail-gem/error_emails/multiple_content_types.eml": "MULTIPLE_UNIQUE_HEADERS",  # 8.4
    "mail-gem/error_emails/multiple_references_with_one_invalid.eml": "BROKEN_HEADERS",  # 8.4
    "mail-gem/mime_emails/raw_email_with_binary_encoded.eml": "MULTIPLE_UNIQUE_HEADERS",  # 8.4
    "mail-gem/mime_emails/raw_email_with_multipart_mixed_quoted_boundary.eml": "MULTIPLE_UNIQUE_HEADERS",  # 8.4
    "mail-gem/plain_emails/raw_email10.eml": "R_BAD_CTE_7BIT",  # 8.9
    "mail-gem/plain_emails/raw_email5.eml": "R_BAD_CTE_7BIT",  # 7.5
    "mail-gem/plain_emails/raw_email6.eml": "R_BAD_CTE_7BIT",  # 8.9
    "mail-gem/plain_emails/raw_email_bad_time.eml": "DATE_IN_FUTURE",  # 12.95, year 3609
    "mail-gem/plain_emails/raw_email_incorrect_header.eml": "BROKEN_HEADERS",  # 7.9
    "mail-gem/plain_emails/raw_email_multiple_from.eml": "BROKEN_HEADERS",  # 8.9
    "mail-gem/plain_emails/raw_email_with_at_display_name.eml": "MULTIPLE_FROM",  # 7.9
    "mail-gem/plain_emails/raw_email_with_bad_date.eml": "MISSING_MIME_VERSION",  # 7.0
    "mail-gem/rfc2822/example13.eml": "BROKEN_HEADERS",  # 7.9
    "mail-gem/rfc6532/utf8_headers.eml": "INVALID_FROM_8BIT",  # 7.9
}


def make_policy(url: str, **table: Any) -> Rspamd:
    """An Rspamd policy built the way the gateway builds it."""
    levels = table.pop("spam_levels", {})
    return Rspamd(gateway_config.build({"rspamd": {"url": url, **table}, "spam_levels": levels}))


def context(
    sender: str = "a@example.com",
    recipients: tuple[str, ...] = ("b@example.org",),
    auth_user: str | None = None,
    address: str = "127.0.0.1",
) -> PolicyContext:
    client = ClientInfo(ipaddress.ip_address(address), 40000, "smtp", helo="client.example.com", auth_user=auth_user)
    return PolicyContext(client, Envelope(sender, list(recipients)), queue_id="RSTESTQUEUE")


async def _scan(policy: Rspamd, message: bytes, ctx: PolicyContext | None = None) -> Verdict:
    try:
        return await policy.on_data(ctx or context(), message)
    finally:
        await policy.aclose()


def scan(policy: Rspamd, message: bytes, ctx: PolicyContext | None = None) -> Verdict:
    return asyncio.run(_scan(policy, message, ctx))


def check(policy: Rspamd, message: bytes, ctx: PolicyContext | None = None) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        try:
            return await policy.check(ctx or context(), message)
        finally:
            await policy.aclose()

    return asyncio.run(run())


def forced(action: str, message: bytes = HAM) -> bytes:
    """``message`` with the harness header that makes the test rspamd answer ``action``."""
    return f"X-Gateway-Test-Action: {action}\r\n".encode() + message


def headers_of(verdict: Verdict) -> dict[str, str]:
    return dict(verdict.headers.prepend)


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, the way a message arrives over SMTP."""
    return re.sub(rb"\r?\n", b"\r\n", data)


# ---- configuration ----


def test_defaults():
    policy = Rspamd(gateway_config.build({}))
    assert (policy.url, policy.timeout, policy.on_error, policy.password, policy.use_actions) == (
        "http://127.0.0.1:11333",
        30.0,
        "tempfail",
        None,
        False,
    )
    assert policy.name == "rspamd"


def test_settings_are_read():
    policy = make_policy(
        "https://rspamd.example.net:11333/", timeout="5s", on_error="pass", password="s3cret", use_actions=True
    )
    assert (policy.url, policy.timeout, policy.on_error, policy.password, policy.use_actions) == (
        "https://rspamd.example.net:11333",
        5.0,
        "pass",
        "s3cret",
        True,
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"url": "127.0.0.1:11333"}, "rspamd.url"),
        ({"url": "ftp://127.0.0.1/"}, "rspamd.url"),
        ({"url": "http://127.0.0.1:99999"}, "rspamd.url"),
        ({"url": "http:///checkv2"}, "rspamd.url"),
        ({"url": 11333}, "rspamd.url"),
        ({"timeout": "forever"}, "rspamd.timeout"),
        ({"timeout": "0s"}, "rspamd.timeout"),
        ({"on_error": "accept"}, "rspamd.on_error"),
        ({"password": "a\r\nb"}, "rspamd.password"),
        ({"use_actions": "yes"}, "rspamd.use_actions"),
        ({"use_action": True}, "rspamd.use_action"),
        ({"spam_levels": {"tag2_level": 9}}, "spam_levels.tag2_level"),
    ],
)
def test_config_errors_name_the_key(table, key):
    table = dict(table)
    with pytest.raises(ConfigError) as caught:
        make_policy(table.pop("url", "http://127.0.0.1:11333"), **table)
    assert caught.value.key == key


def test_password_is_not_in_the_error_message():
    with pytest.raises(ConfigError) as caught:
        make_policy("http://127.0.0.1:11333", password="top\nsecret")
    assert "secret" not in str(caught.value)


# ---- the request ----


def test_request_headers_carry_the_envelope():
    policy = make_policy("http://127.0.0.1:11333", password="pw")
    headers = policy.request_headers(context(recipients=("b@example.org", "c@example.org"), auth_user="alice"))
    assert list(headers.items()) == [
        ("IP", "127.0.0.1"),
        ("Helo", "client.example.com"),
        ("From", "a@example.com"),
        ("Rcpt", "b@example.org"),
        ("Rcpt", "c@example.org"),
        ("Queue-Id", "RSTESTQUEUE"),
        ("User", "alice"),
        ("Password", "pw"),
    ]
    assert "Hostname" not in headers


def test_null_sender_and_no_auth():
    headers = make_policy("http://127.0.0.1:11333").request_headers(context(sender=""))
    assert headers["From"] == "<>" and "User" not in headers and "Password" not in headers


def test_rspamd_receives_the_envelope(rspamd):
    """The harness rule GATEWAY_TEST_ENVELOPE echoes what rspamd parsed from our request headers."""
    ctx = context(recipients=("b@example.org", "c@example.org"), auth_user="alice")
    result = check(make_policy(rspamd.url), HAM, ctx)
    assert result["symbols"]["GATEWAY_TEST_ENVELOPE"]["options"] == [
        "ip=127.0.0.1",
        "helo=client.example.com",
        "from=a@example.com",
        "rcpt=b@example.org",
        "rcpt=c@example.org",
        "queue_id=RSTESTQUEUE",
        "user=alice",
    ]
    # rspamd compared the envelope with the message: To matches Rcpt, From matches MAIL FROM
    assert {"TO_MATCH_ENVRCPT_ALL", "FROM_EQ_ENVFROM"} <= set(result["symbols"])


def test_envelope_mismatch_shows_in_rspamd_symbols(rspamd):
    result = check(make_policy(rspamd.url), HAM, context(sender="x@example.net", recipients=("y@example.net",)))
    assert {"FROM_NEQ_ENVFROM", "FORGED_RECIPIENTS"} <= set(result["symbols"])
    assert "ip=127.0.0.1" in result["symbols"]["GATEWAY_TEST_ENVELOPE"]["options"]


def test_null_sender_reaches_rspamd_as_empty(rspamd):
    result = check(make_policy(rspamd.url), HAM, context(sender=""))
    assert "from=" in result["symbols"]["GATEWAY_TEST_ENVELOPE"]["options"]


# ---- verdicts by the score levels (use_actions = false) ----


def test_gtube_is_rejected_by_score(rspamd):
    policy = make_policy(rspamd.url)
    result = check(policy, GTUBE_MAIL)
    assert result["action"] == "reject" and result["score"] == 15.0 and "GTUBE" in result["symbols"]
    verdict = scan(policy, GTUBE_MAIL)
    assert verdict.action is Action.REJECT
    assert verdict.reply == Reply(550, "5.7.1", "Message rejected as spam")
    assert verdict.reason == "spam" and "score=15.000" in verdict.detail


def test_ham_passes_without_spam_headers(rspamd):
    policy = make_policy(rspamd.url)
    assert check(policy, HAM)["score"] < 2.0  # observed 0.9
    assert scan(policy, HAM) == CONTINUE


def test_score_between_tag2_and_kill_marks_and_tags_the_subject(rspamd):
    """The undated ham scores 3.4 here; tag 1 / tag2 2 / kill 10 puts it in the tag2 band."""
    policy = make_policy(rspamd.url, tag_level=1.0, tag2_level=2.0, kill_level=10.0)
    verdict = scan(policy, UNDATED)
    assert verdict.action is Action.CONTINUE
    headers = headers_of(verdict)
    assert headers["X-Spam-Flag"] == "YES"
    assert 2.0 <= float(headers["X-Spam-Score"]) < 10.0
    status = headers["X-Spam-Status"].replace("\r\n", "")
    assert status.startswith(f"Yes, score={headers['X-Spam-Score']} tag=1 tag2=2 kill=10 engine=rspamd tests=[")
    assert "MISSING_DATE" in status and "MISSING_MID" in status
    out = apply_edits(UNDATED, b"", (verdict.headers,))
    assert [field_value(f) for f in raw_fields(out) if field_name(f) == "subject"] == ["***SPAM*** lunch"]


def test_levels_ignore_rspamd_action_when_use_actions_is_off(rspamd):
    assert scan(make_policy(rspamd.url), forced("reject")) == CONTINUE  # forced action, score 0


# ---- verdicts by rspamd's action (use_actions = true) ----


def test_gtube_is_rejected_by_action(rspamd):
    verdict = scan(make_policy(rspamd.url, use_actions=True), GTUBE_MAIL)
    assert verdict.action is Action.REJECT
    assert verdict.reply == Reply(554, "5.7.1", "Gtube pattern")
    assert verdict.reason == "spam"


def test_ham_passes_by_action(rspamd):
    assert scan(make_policy(rspamd.url, use_actions=True), HAM) == CONTINUE


def test_no_action_above_tag_level_gets_status_no(rspamd):
    verdict = scan(make_policy(rspamd.url, use_actions=True), UNDATED)  # 3.4: "no action", >= tag 2.0
    assert verdict.action is Action.CONTINUE
    assert headers_of(verdict)["X-Spam-Flag"] == "NO" and verdict.headers.replace == ()


@pytest.mark.parametrize(
    ("action", "expected", "reply", "reason"),
    [
        ("reject", Action.REJECT, Reply(554, "5.7.1", "forced by test"), "spam"),
        ("soft reject", Action.TEMPFAIL, SPAM_SOFT_REJECT, "spam_soft_reject"),
    ],
)
def test_refusing_actions(rspamd, action, expected, reply, reason):
    verdict = scan(make_policy(rspamd.url, use_actions=True), forced(action))
    assert (verdict.action, verdict.reply, verdict.reason) == (expected, reply, reason)


def test_greylist_without_greylisting_state_is_accepted_with_headers(rspamd):
    # A raw "greylist" only reaches us without rspamd's greylist module: deferring would defer forever.
    verdict = scan(make_policy(rspamd.url, use_actions=True), forced("greylist"))
    assert (verdict.action, verdict.reason) == (Action.CONTINUE, "greylist_accepted")
    assert headers_of(verdict)["X-Spam-Flag"] == "NO"


def test_rspamd_levels_default_to_rspamd_scale_and_are_settable(rspamd):
    default = make_policy(rspamd.url)
    assert (default.levels.tag_level, default.levels.tag2_level, default.levels.kill_level) == (2.0, 6.0, 15.0)
    custom = make_policy(rspamd.url, kill_level=6.9, spam_levels={"subject_tag": "[S] "})
    assert custom.levels.kill_level == 6.9 and custom.levels.subject_tag == "[S] "
    with pytest.raises(gateway_config.ConfigError) as error:
        make_policy(rspamd.url, tag2_level=20.0)
    assert error.value.key == "rspamd.tag2_level"


def test_add_header_marks_without_touching_the_subject(rspamd):
    verdict = scan(make_policy(rspamd.url, use_actions=True), forced("add header"))
    assert verdict.action is Action.CONTINUE
    assert headers_of(verdict)["X-Spam-Flag"] == "YES"
    assert headers_of(verdict)["X-Spam-Status"].startswith("Yes, ")
    assert verdict.headers.replace == ()


def test_rewrite_subject_uses_rspamd_subject(rspamd):
    policy = make_policy(rspamd.url, use_actions=True)
    message = forced("rewrite subject", HAM)
    subject = check(policy, message)["subject"]
    assert "lunch" in subject and subject != "lunch"  # rspamd's "*** SPAM *** %s"
    verdict = scan(policy, message)
    assert verdict.action is Action.CONTINUE and headers_of(verdict)["X-Spam-Flag"] == "YES"
    assert verdict.headers.replace == (("Subject", subject),)


def test_rewrite_subject_keeps_rspamd_encoded_words(rspamd):
    message = forced("rewrite subject", HAM.replace(b"Subject: lunch", b"Subject: =?UTF-8?B?TMO8bmNo?="))
    verdict = scan(make_policy(rspamd.url, use_actions=True), message)
    ((name, value),) = verdict.headers.replace
    assert name == "Subject" and value.isascii() and value.startswith("=?UTF-8?")
    decoded = str(email.header.make_header(email.header.decode_header(value)))
    assert decoded.endswith("Lünch") and "SPAM" in decoded


# ---- failures ----


def test_nothing_listening_is_a_scanner_error():
    port = free_ports(1)[0]
    with pytest.raises(ScannerError, match=f"127.0.0.1:{port}"):
        scan(make_policy(f"http://127.0.0.1:{port}", timeout="5s"), HAM)


def test_stopped_daemon_is_a_scanner_error_and_recovers_after_restart():
    with RspamdDaemon() as daemon:
        policy = make_policy(daemon.url, timeout="10s")
        assert scan(policy, GTUBE_MAIL).action is Action.REJECT
        daemon.stop()
        assert not daemon.running
        with pytest.raises(ScannerError):
            scan(policy, GTUBE_MAIL)
        daemon.start()  # same ports
        assert scan(policy, GTUBE_MAIL).action is Action.REJECT


class FakeRspamd:
    """An aiohttp server on a free port answering /checkv2 with a fixed status and body."""

    def __init__(self, status: int = 200, body: bytes = b"{}", delay: float = 0.0) -> None:
        self.status, self.body, self.delay = status, body, delay
        self.requests: list[tuple[dict[str, list[str]], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name, []).append(value)
        self.requests.append((headers, await request.read()))
        if self.delay:
            try:  # a slow rspamd, released at teardown so the server can shut down at once
                await asyncio.wait_for(self.release.wait(), self.delay)
            except TimeoutError:
                pass
        return web.Response(status=self.status, body=self.body, content_type="application/json")

    async def run(
        self, policy_table: dict[str, Any], message: bytes = HAM, ctx: PolicyContext | None = None
    ) -> Verdict:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/checkv2", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return await _scan(make_policy(f"http://127.0.0.1:{port}", **policy_table), message, ctx)
        finally:
            self.release.set()
            await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "table"),
    [
        (500, b'{"error": "internal"}', {}),
        (200, b"<html>hello</html>", {}),
        (200, b"[1, 2]", {}),
        (200, b'{"score": 1.0, "symbols": {}}', {}),  # no action
        (200, b'{"action": "no action", "symbols": {}}', {}),  # no score
        (200, b'{"action": "no action", "score": "high"}', {}),
        (200, b'{"action": "no action", "score": 1.0, "symbols": []}', {}),
        (200, b'{"action": "quarantine", "score": 1.0}', {"use_actions": True}),  # not an action we know
    ],
)
def test_bad_answers_are_scanner_errors(status, body, table):
    with pytest.raises(ScannerError):
        asyncio.run(FakeRspamd(status, body).run({"timeout": "5s", **table}))


def test_minimal_answer_is_enough():
    verdict = asyncio.run(
        FakeRspamd(200, json.dumps({"action": "no action", "score": 17.5}).encode()).run({"timeout": "5s"})
    )
    assert verdict.action is Action.REJECT and "tests=" in verdict.detail


def test_slow_answer_times_out_as_scanner_error():
    started = time.monotonic()
    with pytest.raises(ScannerError, match="within 0.5s"):
        asyncio.run(FakeRspamd(delay=10).run({"timeout": 0.5}))
    assert time.monotonic() - started < 5


def test_password_and_message_are_sent():
    fake = FakeRspamd(200, b'{"action": "no action", "score": 0.0, "symbols": {}}')
    ctx = context(recipients=("b@example.org", "c@example.org"))
    asyncio.run(fake.run({"password": "s3cret"}, HAM, ctx))
    ((headers, body),) = fake.requests
    assert headers["Password"] == ["s3cret"] and headers["Rcpt"] == ["b@example.org", "c@example.org"]
    assert body == HAM


def test_aclose_closes_the_session_and_a_later_scan_reopens(rspamd):
    policy = make_policy(rspamd.url)

    async def twice() -> None:
        assert await policy.on_data(context(), HAM) == CONTINUE
        session = policy._session
        await policy.aclose()
        assert session is not None and session.closed and policy._session is None
        assert await policy.on_data(context(), HAM) == CONTINUE
        await policy.aclose()

    asyncio.run(twice())


# ---- the corpus ----


def corpus_envelope(message: bytes) -> Envelope:
    """The envelope a client would likely send: MAIL FROM = From:, RCPT TO = To:/Cc: (fallbacks when absent).

    A mismatched envelope would add FORGED_SENDER/FORGED_RECIPIENTS points that say
    nothing about the message.
    """
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)

    def addresses(*names: str) -> list[str]:
        values = [str(value) for name in names for value in (parsed.get_all(name) or [])]
        return [
            address
            for _, address in email.utils.getaddresses(values)
            if "@" in address and address.isascii() and " " not in address
        ]

    senders, recipients = addresses("From"), addresses("To", "Cc")
    return Envelope(senders[0] if senders else "a@example.com", recipients or ["b@example.org"])


@pytest.fixture(scope="module", params=["default", "amavis_kill"])
def corpus_verdicts(rspamd: RspamdDaemon, request) -> tuple[str, dict[str, Verdict | BaseException]]:
    """Every corpus message scanned once (four at a time), from 127.0.0.1: under the default
    levels, and with the amavis kill level 6.9."""
    policy = make_policy(rspamd.url) if request.param == "default" else make_policy(rspamd.url, kill_level=6.9)

    async def scan_all() -> list[Verdict | BaseException]:
        limit = asyncio.Semaphore(4)

        async def one(path: Path) -> Verdict:
            message = to_crlf(path.read_bytes())
            ctx = context()
            ctx.envelope = corpus_envelope(message)
            async with limit:
                return await policy.on_data(ctx, message)

        try:
            return list(await asyncio.gather(*(one(p) for p in CORPUS_FILES), return_exceptions=True))
        finally:
            await policy.aclose()

    verdicts = asyncio.run(scan_all())
    return request.param, {path.relative_to(CORPUS).as_posix(): v for path, v in zip(CORPUS_FILES, verdicts)}


def test_corpus_is_present():
    assert len(CORPUS_FILES) >= 100, f"expected the corpus at {CORPUS}"
    names = {path.relative_to(CORPUS).as_posix() for path in CORPUS_FILES}
    assert set(CORPUS_SPAM) <= names


@pytest.mark.parametrize("name", [p.relative_to(CORPUS).as_posix() for p in CORPUS_FILES])
def test_corpus_message(corpus_verdicts, name):
    levels, verdicts = corpus_verdicts
    verdict = verdicts[name]
    assert isinstance(verdict, Verdict), f"{name}: {verdict!r}"
    if levels == "amavis_kill" and name in CORPUS_SPAM:
        assert verdict.action is Action.REJECT, f"{name}: {verdict}"
        assert CORPUS_SPAM[name] in verdict.detail.split("tests=")[1].split(","), verdict.detail
    else:
        assert verdict.action is Action.CONTINUE, f"{name}: {verdict.detail}"
