"""policies.spam.spamassassin against a real spamd on loopback (tests/harness/spam_daemons.py).

The session's ``spamd`` fixture serves the scans (offline: ``--local``,
``dns_available no``, no Bayes); the stop/restart test uses a private
:class:`SpamdDaemon` so the session one stays up. Small asyncio servers stand
in for a spamd that answers garbage or nothing.

Observed scores (SpamAssassin 4.0.1, Debian 12 rules): GTUBE 1000
(GTUBE, MSGID_SHORT, NO_RECEIVED, NO_RELAYS, TVD_SPACE_RATIO); the dated
ham below 0.0; the same ham without Date and Message-ID 3.3 (MISSING_DATE,
MISSING_MID, NO_RECEIVED, NO_RELAYS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import config as gateway_config
from gateway.envelope import ClientInfo, Envelope
from gateway.errors import ConfigError, ScannerError
from gateway.message import apply_edits, field_name, field_value, raw_fields
from gateway.pipeline.policy import PolicyContext
from gateway.reply import Reply
from gateway.verdict import CONTINUE, Action, Verdict
from policies.spam.spamassassin import SKIPPED_TOO_LARGE, SpamAssassin
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
from tests.harness.spam_daemons import SpamdDaemon

# Corpus messages SpamAssassin scores at or above the default kill_level 6.9, with the rule
# that carries them there. They are parser test cases (broken dates, advance-fee text, a
# header-less part), so the REJECT is legitimate; every other message must pass.
CORPUS_SPAM = {
    "mail-gem/error_emails/bad_date_header2.eml": "DATE_IN_FUTURE_12_24",  # 8.9
    "mail-gem/error_emails/bad_subject.eml": "FROM_EXCESS_BASE64",  # 11.1
    "mail-gem/error_emails/content_transfer_encoding_empty.eml": "HTTP_EXCESSIVE_ESCAPES",  # 11.1
    "mail-gem/error_emails/content_transfer_encoding_text-html.eml": "LOTS_OF_MONEY",  # 11.9
    "mail-gem/error_emails/empty_group_lists.eml": "ADVANCE_FEE_3_NEW_MONEY",  # 12.5
    "mail-gem/plain_emails/raw_email_bad_time.eml": "DATE_IN_FUTURE_Q_PLUS",  # 20.2, year 3609
    "mail-gem/sample_output_multipart": "NO_HEADERS_MESSAGE",  # 7.4, a bare MIME part
}


def make_policy(address: str, **table: Any) -> SpamAssassin:
    """A SpamAssassin policy built the way the gateway builds it."""
    levels = table.pop("spam_levels", {})
    return SpamAssassin(gateway_config.build({"spamassassin": {"address": address, **table}, "spam_levels": levels}))


def context() -> PolicyContext:
    client = ClientInfo(ipaddress.ip_address("127.0.0.1"), 40000, "smtp", helo="client.example.com")
    return PolicyContext(client, Envelope("a@example.com", ["b@example.org"]), queue_id="SATESTQUEUE")


def scan(policy: SpamAssassin, message: bytes) -> Verdict:
    return asyncio.run(policy.on_data(context(), message))


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, the way a message arrives over SMTP."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def headers_of(verdict: Verdict) -> dict[str, str]:
    return dict(verdict.headers.prepend)


# ---- configuration ----


def test_defaults():
    policy = SpamAssassin(gateway_config.build({}))
    assert (policy.host, policy.port, policy.timeout, policy.on_error, policy.max_size, policy.user) == (
        "127.0.0.1",
        783,
        30.0,
        "tempfail",
        512 * 1024,
        None,
    )
    assert policy.name == "spamassassin"


def test_settings_are_read():
    policy = make_policy("[::1]:10783", timeout="2m", on_error="pass", max_size="1M", user="filter")
    assert (policy.host, policy.port, policy.timeout, policy.on_error, policy.max_size, policy.user) == (
        "::1",
        10783,
        120.0,
        "pass",
        1024 * 1024,
        "filter",
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"address": "127.0.0.1"}, "spamassassin.address"),
        ({"address": "127.0.0.1:0"}, "spamassassin.address"),
        ({"address": "localhost:spamd"}, "spamassassin.address"),
        ({"address": 783}, "spamassassin.address"),
        ({"timeout": "soon"}, "spamassassin.timeout"),
        ({"timeout": 0}, "spamassassin.timeout"),
        ({"on_error": "ignore"}, "spamassassin.on_error"),
        ({"max_size": "big"}, "spamassassin.max_size"),
        ({"user": ["a"]}, "spamassassin.user"),
        ({"adress": "127.0.0.1:783"}, "spamassassin.adress"),
        ({"spam_levels": {"kill_level": "x"}}, "spam_levels.kill_level"),
    ],
)
def test_config_errors_name_the_key(table, key):
    table = dict(table)
    with pytest.raises(ConfigError) as caught:
        make_policy(table.pop("address", "127.0.0.1:783"), **table)
    assert caught.value.key == key


# ---- verdicts from the real spamd ----


def test_gtube_is_rejected(spamd):
    policy = make_policy(spamd.address)
    score, tests = asyncio.run(policy.check(GTUBE_MAIL))
    assert score >= 1000 and "GTUBE" in tests
    verdict = scan(policy, GTUBE_MAIL)
    assert verdict.action is Action.REJECT
    assert verdict.reply == Reply(550, "5.7.1", "Message rejected as spam")
    assert verdict.reason == "spam" and "GTUBE" in verdict.detail


def test_gtube_is_held_with_kill_action_hold(spamd):
    verdict = scan(make_policy(spamd.address, spam_levels={"kill_action": "hold"}), GTUBE_MAIL)
    assert verdict.action is Action.HOLD and verdict.reason == "spam"


def test_ham_passes_without_spam_headers(spamd):
    policy = make_policy(spamd.address)
    score, _ = asyncio.run(policy.check(HAM))
    assert score < 2.0  # observed 0.0
    assert scan(policy, HAM) == CONTINUE


def test_score_between_tag2_and_kill_marks_and_tags_the_subject(spamd):
    """The undated ham scores 3.3 here; tag 1 / tag2 2 / kill 10 puts it in the tag2 band."""
    policy = make_policy(spamd.address, spam_levels={"tag_level": 1.0, "tag2_level": 2.0, "kill_level": 10.0})
    verdict = scan(policy, UNDATED)
    assert verdict.action is Action.CONTINUE
    headers = headers_of(verdict)
    assert headers["X-Spam-Flag"] == "YES"
    assert 2.0 <= float(headers["X-Spam-Score"]) < 10.0
    status = headers["X-Spam-Status"].replace("\r\n", "")
    assert status.startswith(f"Yes, score={headers['X-Spam-Score']} tag=1 tag2=2 kill=10 engine=spamassassin tests=[")
    assert "MISSING_DATE" in status and "MISSING_MID" in status
    assert verdict.headers.replace == (("Subject", "***SPAM*** lunch"),)
    out = apply_edits(UNDATED, b"", (verdict.headers,))
    assert [field_value(f) for f in raw_fields(out) if field_name(f) == "subject"] == ["***SPAM*** lunch"]


def test_score_between_tag_and_tag2_gets_status_no(spamd):
    policy = make_policy(spamd.address, spam_levels={"tag_level": 1.0, "tag2_level": 5.0, "kill_level": 10.0})
    verdict = scan(policy, UNDATED)
    assert verdict.action is Action.CONTINUE and verdict.headers.replace == ()
    assert headers_of(verdict)["X-Spam-Flag"] == "NO"
    assert headers_of(verdict)["X-Spam-Status"].startswith("No, score=")


def test_too_large_message_is_not_scanned(spamd):
    big = GTUBE_MAIL + b"x" * 76 + b"\r\n" * 20
    policy = make_policy(spamd.address, max_size=len(big) - 1)
    assert scan(policy, big) == SKIPPED_TOO_LARGE
    assert headers_of(SKIPPED_TOO_LARGE) == {"X-Spam-Checker": "spamassassin skipped (too large)"}
    assert scan(make_policy(spamd.address, max_size=len(big)), big).action is Action.REJECT


def test_user_is_sent_to_spamd(spamd):
    assert scan(make_policy(spamd.address, user="gwtestuser"), HAM) == CONTINUE
    log = spamd.dir / "spamd.log"
    deadline = time.monotonic() + 10
    while "for gwtestuser:" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "spamd did not log the user"
        time.sleep(0.1)


def test_messages_after_the_first_build_no_ssl_contexts(spamd, monkeypatch):
    """The spamd client is built once: scanning must not parse CA bundles per message.

    aiospamc's one-shot ``aiospamc.symbols()`` made two ``ssl.create_default_context()``
    per call (~40 ms CPU on the event loop); every ``SSLContext``, however created, is
    counted here while the real spamd scans several messages, one after another and
    concurrently on one loop.
    """
    created: list[type] = []
    original_new = ssl.SSLContext.__new__

    def counting_new(cls: type[ssl.SSLContext], *args: Any, **kwargs: Any) -> ssl.SSLContext:
        created.append(cls)
        return original_new(cls, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "__new__", staticmethod(counting_new))
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert len(created) == 1, "the SSLContext counter is not wired"
    policy = make_policy(spamd.address)
    assert scan(policy, GTUBE_MAIL).action is Action.REJECT
    after_first = len(created)

    for message in (HAM, GTUBE_MAIL, UNDATED):
        assert isinstance(scan(policy, message), Verdict)

    async def concurrently() -> list[Verdict]:
        return list(await asyncio.gather(*(policy.on_data(context(), m) for m in (HAM, GTUBE_MAIL, HAM))))

    assert [v.action for v in asyncio.run(concurrently())] == [Action.CONTINUE, Action.REJECT, Action.CONTINUE]
    assert len(created) == after_first, f"{len(created) - after_first} SSL contexts built for 6 more messages"


# ---- failures ----


def test_nothing_listening_is_a_scanner_error():
    port = free_ports(1)[0]
    with pytest.raises(ScannerError, match=f"127.0.0.1:{port}"):
        scan(make_policy(f"127.0.0.1:{port}", timeout="5s"), HAM)


def test_stopped_daemon_is_a_scanner_error_and_recovers_after_restart():
    with SpamdDaemon(children=1) as daemon:
        policy = make_policy(daemon.address, timeout="10s")
        assert scan(policy, GTUBE_MAIL).action is Action.REJECT
        daemon.stop()
        assert not daemon.running
        with pytest.raises(ScannerError):
            scan(policy, GTUBE_MAIL)
        daemon.start()  # same port
        assert scan(policy, GTUBE_MAIL).action is Action.REJECT


async def _with_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], policy_table: dict[str, Any]
) -> Verdict:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await make_policy(f"127.0.0.1:{port}", **policy_table).on_data(context(), HAM)
    finally:
        server.close()
        await server.wait_closed()


def _answering(answer: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the client half-closes after the request
        writer.write(answer)
        await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",  # not spamd at all
        b"SPAMD/1.1 76 Bad header line: (Content-length mismatch)\r\n\r\n",  # spamd error status
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\n\r\nGTUBE",  # no Spam header
        b"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; x / 5.0\r\nContent-length: 0\r\n\r\n",  # unparsable Spam header
        b"",  # closed without a word
    ],
)
def test_garbage_answers_are_scanner_errors(answer):
    with pytest.raises(ScannerError):
        asyncio.run(_with_server(_answering(answer), {"timeout": "5s"}))


def test_silent_server_times_out_as_scanner_error():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    started = time.monotonic()
    with pytest.raises(ScannerError, match="within 0.5s"):
        asyncio.run(_with_server(silent, {"timeout": 0.5}))
    assert time.monotonic() - started < 5


# ---- the corpus ----


@pytest.fixture(scope="module")
def corpus_verdicts(spamd: SpamdDaemon) -> dict[str, Verdict | BaseException]:
    """Every corpus message scanned once (four at a time) under the default levels."""
    policy = make_policy(spamd.address)

    async def scan_all() -> list[Verdict | BaseException]:
        limit = asyncio.Semaphore(4)

        async def one(path: Path) -> Verdict:
            async with limit:
                return await policy.on_data(context(), to_crlf(path.read_bytes()))

        return list(await asyncio.gather(*(one(p) for p in CORPUS_FILES), return_exceptions=True))

    verdicts = asyncio.run(scan_all())
    return {path.relative_to(CORPUS).as_posix(): v for path, v in zip(CORPUS_FILES, verdicts)}


def test_corpus_is_present():
    assert len(CORPUS_FILES) >= 100, f"expected the corpus at {CORPUS}"
    names = {path.relative_to(CORPUS).as_posix() for path in CORPUS_FILES}
    assert set(CORPUS_SPAM) <= names


@pytest.mark.parametrize("name", [p.relative_to(CORPUS).as_posix() for p in CORPUS_FILES])
def test_corpus_message(corpus_verdicts, name):
    verdict = corpus_verdicts[name]
    assert isinstance(verdict, Verdict), f"{name}: {verdict!r}"
    if name in CORPUS_SPAM:
        assert verdict.action is Action.REJECT, f"{name}: {verdict}"
        assert CORPUS_SPAM[name] in verdict.detail.split("tests=")[1].split(","), verdict.detail
    else:
        assert verdict.action is Action.CONTINUE, f"{name}: {verdict.detail}"
