"""gateway.pipeline.runner rules with small fake policies, and policies.relay_access (Postfix relay rules)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway import reply as replies
from gateway.config import build
from gateway.envelope import ClientInfo, Envelope
from gateway.networks import NetworkSet
from gateway.pipeline.policy import Policy, PolicyContext
from gateway.pipeline.runner import Pipeline, PolicyEntry, StageResult
from gateway.reply import Reply
from gateway.verdict import ACCEPT, CONTINUE, Action, HeaderEdit, Verdict, strongest
from policies import REGISTRY
from policies.relay_access import RelayAccess

REJECT_550 = Verdict(Action.REJECT, Reply(550, "5.7.1", "Rejected by fake"), reason="fake_reject")
TEMPFAIL_450 = Verdict(Action.TEMPFAIL, Reply(450, "4.7.1", "Later, says fake"), reason="fake_tempfail")
HOLD = Verdict(Action.HOLD, reason="fake_hold")
DISCARD = Verdict(Action.DISCARD, reason="fake_discard")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make_client(address: str = "192.0.2.10", *, sha256: str | None = None, sha1: str | None = None) -> ClientInfo:
    return ClientInfo(ipaddress.ip_address(address), 40000, "smtp", cert_sha256=sha256, cert_sha1=sha1)


def make_ctx(address: str = "192.0.2.10", **kwargs: Any) -> PolicyContext:
    return PolicyContext(make_client(address, **kwargs), Envelope("sender@example.org"))


class Fixed(Policy):
    """Answers every stage with one verdict and records the calls it got."""

    name: ClassVar[str] = "fixed"

    def __init__(self, verdict: Verdict, label: str = "fixed") -> None:
        self.verdict = verdict
        self.label = label
        self.calls: list[tuple[str, object]] = []

    async def _answer(self, stage: str, arg: object) -> Verdict:
        self.calls.append((stage, arg))
        return self.verdict

    async def on_connect(self, ctx: PolicyContext) -> Verdict:
        return await self._answer("connect", None)

    async def on_helo(self, ctx: PolicyContext, helo: str) -> Verdict:
        return await self._answer("helo", helo)

    async def on_mail(self, ctx: PolicyContext, sender: str) -> Verdict:
        return await self._answer("mail", sender)

    async def on_rcpt(self, ctx: PolicyContext, recipient: str) -> Verdict:
        return await self._answer("rcpt", recipient)

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        return await self._answer("data", message)


def named(verdict: Verdict, name: str) -> Fixed:
    """A Fixed policy whose class name attribute is ``name`` (the pipeline reports policy.name)."""
    cls = type(f"Fixed_{name}", (Fixed,), {"name": name})
    return cls(verdict, name)


class Raising(Policy):
    name: ClassVar[str] = "raising"

    async def on_rcpt(self, ctx: PolicyContext, recipient: str) -> Verdict:
        raise RuntimeError("database unreachable: secret-dsn://user:pw@db")

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        raise KeyError("boom")


class Slow(Policy):
    name: ClassVar[str] = "slow"

    def __init__(self) -> None:
        self.cancelled = False

    async def on_mail(self, ctx: PolicyContext, sender: str) -> Verdict:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return ACCEPT


class Closing(Policy):
    name: ClassVar[str] = "closing"

    def __init__(self, log: list[str], label: str) -> None:
        self.log = log
        self.label = label

    async def aclose(self) -> None:
        self.log.append(self.label)


# ---- the pipeline's rules


def test_empty_pipeline() -> None:
    pipeline = Pipeline([])
    ctx = make_ctx()
    assert run(pipeline.connect(ctx)) == StageResult(CONTINUE, None, ())
    assert run(pipeline.mail(ctx, "a@example.org")).verdict.action is Action.CONTINUE
    rcpt = run(pipeline.rcpt(ctx, "b@example.net"))
    assert rcpt.verdict.action is Action.REJECT and rcpt.verdict.reply == replies.RELAY_DENIED
    assert run(pipeline.data(ctx, b"x")).verdict is ACCEPT


def test_first_terminal_verdict_wins_and_later_policies_do_not_run() -> None:
    first = named(CONTINUE, "first")
    second = named(TEMPFAIL_450, "second")
    third = named(REJECT_550, "third")
    pipeline = Pipeline([first, second, third])
    result = run(pipeline.mail(make_ctx(), "a@example.org"))
    # Order decides, not precedence: the TEMPFAIL comes first, the stronger REJECT never runs.
    assert result.verdict is TEMPFAIL_450
    assert result.policy == "second"
    assert first.calls == [("mail", "a@example.org")]
    assert second.calls == [("mail", "a@example.org")]
    assert third.calls == []


@pytest.mark.parametrize("verdict", [ACCEPT, REJECT_550, TEMPFAIL_450, HOLD, DISCARD])
def test_any_non_continue_verdict_is_terminal(verdict: Verdict) -> None:
    after = named(REJECT_550, "after")
    result = run(Pipeline([named(verdict, "decider"), after]).helo(make_ctx(), "client.example"))
    assert result.verdict is verdict and result.policy == "decider"
    assert after.calls == []


def test_hooks_get_their_stage_arguments() -> None:
    policy = Fixed(CONTINUE)
    pipeline = Pipeline([policy])
    ctx = make_ctx()
    run(pipeline.connect(ctx))
    run(pipeline.helo(ctx, "client.example"))
    run(pipeline.mail(ctx, ""))
    run(pipeline.rcpt(ctx, "b@example.net"))
    run(pipeline.data(ctx, b"Subject: x\r\n\r\nbody\r\n"))
    assert policy.calls == [
        ("connect", None),
        ("helo", "client.example"),
        ("mail", ""),
        ("rcpt", "b@example.net"),
        ("data", b"Subject: x\r\n\r\nbody\r\n"),
    ]


def test_rcpt_default_deny() -> None:
    result = run(Pipeline([named(CONTINUE, "a"), named(CONTINUE, "b")]).rcpt(make_ctx(), "b@example.net"))
    assert result.verdict.action is Action.REJECT
    assert str(result.verdict.reply) == "554 5.7.1 Relay access denied"
    assert result.verdict.reason == "relay_denied"
    assert result.policy is None


def test_rcpt_accept_is_kept() -> None:
    result = run(Pipeline([named(CONTINUE, "a"), named(ACCEPT, "b")]).rcpt(make_ctx(), "b@example.net"))
    assert result.verdict is ACCEPT and result.policy == "b"


def test_data_without_objection_is_accept() -> None:
    result = run(Pipeline([named(CONTINUE, "a")]).data(make_ctx(), b"x"))
    assert result.verdict.action is Action.ACCEPT and result.policy is None


def test_raising_policy_gives_451_4_3_0(caplog: pytest.LogCaptureFixture) -> None:
    after = named(ACCEPT, "after")
    pipeline = Pipeline([named(CONTINUE, "before"), Raising(), after])
    with caplog.at_level(logging.ERROR, logger="gateway.pipeline.runner"):
        result = run(pipeline.rcpt(make_ctx(), "b@example.net"))
        data = run(pipeline.data(make_ctx(), b"x"))
    for outcome in (result, data):
        assert outcome.verdict.action is Action.TEMPFAIL
        assert outcome.verdict.reply == replies.INTERNAL_ERROR
        assert str(outcome.verdict.reply).startswith("451 4.3.0 ")
        assert outcome.verdict.reason == "policy_error"
        assert outcome.policy == "raising"
    # Fail-closed: the policy after the crash does not get to ACCEPT, and the client never sees the error text.
    assert after.calls == []
    assert "secret-dsn" not in str(result.verdict.reply)
    assert any("raising" in record.getMessage() and record.exc_info for record in caplog.records)


def test_slow_policy_times_out_with_451_4_7_1(caplog: pytest.LogCaptureFixture) -> None:
    slow = Slow()
    after = named(ACCEPT, "after")
    pipeline = Pipeline([PolicyEntry(slow, timeout=0.05), after])

    with caplog.at_level(logging.ERROR, logger="gateway.pipeline.runner"):
        result = run(pipeline.mail(make_ctx(), "a@example.org"))
    assert result.verdict.action is Action.TEMPFAIL
    assert result.verdict.reply == replies.TEMP_POLICY_FAILURE
    assert str(result.verdict.reply).startswith("451 4.7.1 ")
    assert result.verdict.reason == "slow_unavailable"
    assert result.policy == "slow"
    assert slow.cancelled
    assert after.calls == []
    assert any("timed out" in record.getMessage() for record in caplog.records)


def test_header_edits_are_collected_in_order() -> None:
    first = HeaderEdit(prepend=(("X-Scanned", "one"),))
    second = HeaderEdit(remove=("X-Spam",))
    third = HeaderEdit(prepend=(("X-A", "1"), ("X-B", "2")), remove=("X-C",))
    pipeline = Pipeline(
        [
            named(Verdict(Action.CONTINUE, headers=first), "p1"),
            named(CONTINUE, "p2"),  # no edit: nothing collected
            named(Verdict(Action.CONTINUE, headers=second), "p3"),
            named(Verdict(Action.CONTINUE, headers=third), "p4"),
        ]
    )
    result = run(pipeline.data(make_ctx(), b"x"))
    assert result.verdict.action is Action.ACCEPT
    assert result.headers == (first, second, third)


def test_header_edits_before_a_terminal_verdict_are_returned_with_it() -> None:
    edit = HeaderEdit(prepend=(("X-Checked", "yes"),))
    late = HeaderEdit(prepend=(("X-Late", "never"),))
    pipeline = Pipeline(
        [
            named(Verdict(Action.CONTINUE, headers=edit), "p1"),
            named(HOLD, "p2"),
            named(Verdict(Action.CONTINUE, headers=late), "p3"),
        ]
    )
    result = run(pipeline.data(make_ctx(), b"x"))
    assert result.verdict is HOLD and result.policy == "p2"
    assert result.headers == (edit,)
    rcpt = run(Pipeline([named(Verdict(Action.CONTINUE, headers=edit), "p1")]).rcpt(make_ctx(), "b@example.net"))
    assert rcpt.verdict.action is Action.REJECT and rcpt.headers == (edit,)


def test_aclose_closes_every_policy_in_order() -> None:
    closed: list[str] = []
    run(Pipeline([Closing(closed, "a"), Closing(closed, "b")]).aclose())
    assert closed == ["a", "b"]


# ---- Verdict


def test_verdict_reply_class_must_fit_action() -> None:
    with pytest.raises(ValueError):
        Verdict(Action.REJECT)
    with pytest.raises(ValueError):
        Verdict(Action.REJECT, Reply(450, "4.7.1", "x"))
    with pytest.raises(ValueError):
        Verdict(Action.TEMPFAIL, Reply(550, "5.7.1", "x"))
    with pytest.raises(ValueError):
        Verdict(Action.TEMPFAIL)
    assert not CONTINUE.is_terminal and ACCEPT.is_terminal and HOLD.is_terminal


def test_strongest_uses_precedence_and_first_on_ties() -> None:
    other_reject = Verdict(Action.REJECT, Reply(554, "5.7.1", "other"))
    assert strongest([]) is CONTINUE
    assert strongest([ACCEPT, HOLD, DISCARD, TEMPFAIL_450, CONTINUE]) is TEMPFAIL_450
    assert strongest([ACCEPT, REJECT_550, TEMPFAIL_450, other_reject]) is REJECT_550
    assert strongest([ACCEPT, HOLD]) is HOLD


# ---- RelayAccess


FP256 = "a1" * 32
FP1 = "b2" * 20


def relay_access(tmp_path: Path, **raw: Any) -> RelayAccess:
    defaults: dict[str, Any] = {
        "mynetworks": ["127.0.0.0/8", "10.1.0.0/16", "[2001:db8::]/32"],
        "relay_domains": ["example.net", ".sub.example.org"],
    }
    defaults.update(raw)
    return RelayAccess(build(defaults, tmp_path))


def rcpt(policy: RelayAccess, ctx: PolicyContext, recipient: str) -> Verdict:
    run(policy.on_connect(ctx))
    return run(policy.on_rcpt(ctx, recipient))


def test_relay_access_is_registered() -> None:
    assert REGISTRY["relay_access"] is RelayAccess


@pytest.mark.parametrize(
    "address, network",
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.9.9.9", "127.0.0.0/8"),
        ("10.1.200.3", "10.1.0.0/16"),
        ("::ffff:10.1.2.3", "10.1.0.0/16"),
        ("::ffff:127.0.0.1", "127.0.0.0/8"),
        ("2001:db8::25", "2001:db8::/32"),
    ],
)
def test_trusted_by_mynetworks(tmp_path: Path, address: str, network: str) -> None:
    policy = relay_access(tmp_path)
    ctx = make_ctx(address)
    assert rcpt(policy, ctx, "anyone@elsewhere.example") is ACCEPT
    assert ctx.client.trusted and ctx.client.trusted_by == "mynetworks"
    assert ctx.client.trusted_rule == f"mynetworks {network}"  # the configured network that matched, for the log


@pytest.mark.parametrize("address", ["192.0.2.10", "10.2.0.1", "::ffff:192.0.2.10", "2001:db9::1", "::1"])
def test_untrusted_addresses(tmp_path: Path, address: str) -> None:
    policy = relay_access(tmp_path)
    ctx = make_ctx(address)
    verdict = rcpt(policy, ctx, "anyone@elsewhere.example")
    assert verdict.action is Action.REJECT
    assert str(verdict.reply) == "554 5.7.1 Relay access denied"
    assert not ctx.client.trusted and ctx.client.trusted_by is None and ctx.client.trusted_rule is None


def test_trusted_by_client_certificate_sha256(tmp_path: Path) -> None:
    policy = relay_access(tmp_path, relay_clientcerts=[":".join([FP256[:2].upper()] * 32)])
    ctx = make_ctx("192.0.2.10", sha256=FP256, sha1=FP1)
    assert rcpt(policy, ctx, "anyone@elsewhere.example") is ACCEPT
    assert ctx.client.trusted and ctx.client.trusted_by == "relay_clientcerts"
    assert ctx.client.trusted_rule == f"relay_clientcerts sha256={FP256}"


def test_trusted_by_client_certificate_sha1(tmp_path: Path) -> None:
    policy = relay_access(tmp_path, relay_clientcerts=[f"{FP1} trusted.mailserver.example"])
    ctx = make_ctx("192.0.2.10", sha256=FP256, sha1=FP1)
    assert rcpt(policy, ctx, "anyone@elsewhere.example") is ACCEPT
    assert ctx.client.trusted_by == "relay_clientcerts"
    assert ctx.client.trusted_rule == f"relay_clientcerts sha1={FP1}"  # the form the config used


def test_unlisted_or_missing_certificate_is_not_trusted(tmp_path: Path) -> None:
    policy = relay_access(tmp_path, relay_clientcerts=[FP256])
    for ctx in (make_ctx("192.0.2.10", sha256="c3" * 32, sha1="d4" * 20), make_ctx("192.0.2.10")):
        assert rcpt(policy, ctx, "anyone@elsewhere.example").action is Action.REJECT
        assert not ctx.client.trusted


def test_classification_is_renewed_at_mail(tmp_path: Path) -> None:
    # The certificate arrives with STARTTLS, after connect.
    policy = relay_access(tmp_path, relay_clientcerts=[FP256])
    ctx = make_ctx("192.0.2.10")
    run(policy.on_connect(ctx))
    assert not ctx.client.trusted
    ctx.client.cert_sha256, ctx.client.cert_sha1 = FP256, FP1
    assert run(policy.on_mail(ctx, "a@example.org")) is CONTINUE
    assert ctx.client.trusted
    assert run(policy.on_rcpt(ctx, "anyone@elsewhere.example")) is ACCEPT
    # And withdrawn when the facts change (a new connection object reusing the context is not trusted).
    ctx.client.cert_sha256 = ctx.client.cert_sha1 = None
    run(policy.on_mail(ctx, "a@example.org"))
    assert not ctx.client.trusted and ctx.client.trusted_by is None


@pytest.mark.parametrize(
    ("recipient", "accepted"),
    [
        ("user@example.net", True),
        ("User@EXAMPLE.NET.", True),
        ("user@sub.example.org", False),  # ".sub.example.org" means subdomains only
        ("user@a.sub.example.org", True),
        ("user@x.y.sub.example.org", True),
        ("user@example.org", False),
        ("user@mail.example.net", False),  # "example.net" is exact
        ("user@notexample.net", False),
        ("user@example.net.evil.example", False),
        ("user@elsewhere.example", False),
    ],
)
def test_untrusted_may_send_to_relay_domains_only(tmp_path: Path, recipient: str, accepted: bool) -> None:
    verdict = rcpt(relay_access(tmp_path), make_ctx("192.0.2.10"), recipient)
    if accepted:
        assert verdict is ACCEPT
    else:
        assert verdict.action is Action.REJECT and verdict.reply == replies.RELAY_DENIED


@pytest.mark.parametrize(
    "recipient",
    [
        "user%elsewhere.example@example.net",
        "elsewhere.example!user@example.net",
        '"user@elsewhere.example"@example.net',
        '"user%elsewhere.example"@a.sub.example.org',
    ],
)
def test_routing_tricks_refused_for_untrusted_allowed_for_trusted(tmp_path: Path, recipient: str) -> None:
    policy = relay_access(tmp_path)
    untrusted = rcpt(policy, make_ctx("192.0.2.10"), recipient)
    assert untrusted.action is Action.REJECT and untrusted.reply == replies.RELAY_DENIED
    assert rcpt(policy, make_ctx("127.0.0.1"), recipient) is ACCEPT


@pytest.mark.parametrize("recipient", ["no-at-sign", "@example.net", "user@", ""])
def test_bad_recipient_syntax(tmp_path: Path, recipient: str) -> None:
    policy = relay_access(tmp_path)
    for ctx in (make_ctx("192.0.2.10"), make_ctx("127.0.0.1")):
        verdict = rcpt(policy, ctx, recipient)
        assert verdict.action is Action.REJECT
        assert verdict.reply == replies.BAD_ADDRESS_SYNTAX


def test_relay_access_in_a_pipeline(tmp_path: Path) -> None:
    policy = relay_access(tmp_path)
    pipeline = Pipeline([policy])
    ctx = make_ctx("192.0.2.10")
    run(pipeline.connect(ctx))
    allowed = run(pipeline.rcpt(ctx, "user@example.net"))
    assert allowed.verdict is ACCEPT and allowed.policy == "relay_access"
    denied = run(pipeline.rcpt(ctx, "user@elsewhere.example"))
    assert denied.verdict.action is Action.REJECT and denied.policy == "relay_access"
    assert str(denied.verdict.reply) == "554 5.7.1 Relay access denied"


def test_network_set_membership() -> None:
    networks = NetworkSet([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])
    assert ipaddress.ip_address("10.255.0.1") in networks
    assert ipaddress.ip_address("::ffff:10.0.0.1") in networks  # IPv4-mapped IPv6 is unmapped
    assert ipaddress.ip_address("2001:db8:1::5") in networks
    assert ipaddress.ip_address("11.0.0.1") not in networks
    assert ipaddress.ip_address("::ffff:11.0.0.1") not in networks
    assert ipaddress.ip_address("::a00:1") not in networks  # IPv4-compatible form is not mapped
    assert ipaddress.ip_address("127.0.0.1") not in NetworkSet([])
