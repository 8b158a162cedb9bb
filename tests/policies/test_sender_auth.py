"""policies.auth.sender_auth (SPF, DKIM, DMARC, ARC) against a real DNS server on loopback.

Every lookup goes over UDP/TCP to :class:`TestDnsServer`, reached the way the
gateway reaches its resolver (``dns_nameservers``); nothing is monkeypatched.
Messages are signed with dkimpy and a key published in the test zone. Our
Authentication-Results field is read back with ``authres``, an independent
RFC 8601 parser.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import authres
import authres.arc  # registers the arc= method with the parser
import authres.dmarc  # registers the dmarc= method with the parser
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import config as gateway_config
from gateway.envelope import ClientInfo, Envelope
from gateway.errors import ConfigError, ScannerError
from gateway.message import apply_edits, field_name, field_value, header_end, raw_fields
from gateway.pipeline.policy import PolicyContext
from gateway.verdict import CONTINUE, Action, Verdict
from policies.auth.dmarc import from_domains, organizational_domain, parse_record
from policies.auth.sender_auth import (
    AR_HEADER,
    QUARANTINE_HEADER,
    SenderAuthentication,
    authserv_id_of,
)
from tests.harness.dns_server import TestDnsServer
from tests.harness.samples import CORPUS, CORPUS_FILES

AUTHSERV_ID = "mx.gw.test"
GOOD_IP = "192.0.2.10"  # inside every test domain's SPF record
BAD_IP = "198.51.100.7"  # outside all of them
HELO_IP = "203.0.113.5"  # the address of mx.example.org
SPF_RECORD = "v=spf1 ip4:192.0.2.0/24 -all"


# ---- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def private_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def zone(private_key: bytes) -> Iterator[TestDnsServer]:
    public = serialization.load_pem_private_key(private_key, None).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    dkim_key = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    records = {
        ("example.com", "TXT"): [SPF_RECORD],
        ("bounce.example.com", "TXT"): [SPF_RECORD],
        ("sub.example.com", "TXT"): [SPF_RECORD],
        ("softfail.test", "TXT"): ["v=spf1 ~all"],
        ("neutral.test", "TXT"): ["v=spf1 ?all"],
        ("broken.test", "TXT"): ["v=spf1 ip4:192.0.2.300 -all"],
        ("nospf.test", "A"): ["192.0.2.99"],
        ("mx.example.org", "A"): [HELO_IP],
        ("mx.example.org", "TXT"): ["v=spf1 a -all"],
        ("sel._domainkey.example.com", "TXT"): [dkim_key],
        ("sel._domainkey.mail.strict.test", "TXT"): [dkim_key],
        ("badkey._domainkey.example.com", "TXT"): ["v=DKIM1; k=rsa; p=bm90IGEga2V5"],
        ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; sp=quarantine", "some other TXT record"],
        ("_dmarc.none.test", "TXT"): ["v=DMARC1; p=none"],
        ("_dmarc.quarantine.test", "TXT"): ["v=DMARC1; p=quarantine"],
        ("_dmarc.reject.test", "TXT"): ["v=DMARC1; p=reject"],
        ("_dmarc.pct.test", "TXT"): ["v=DMARC1; p=reject; pct=0"],
        ("_dmarc.strict.test", "TXT"): ["v=DMARC1; p=reject; adkim=s; aspf=s"],
        ("_dmarc.twice.test", "TXT"): ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
        ("_dmarc.badp.test", "TXT"): ["v=DMARC1; p=bogus"],
        ("_dmarc.rua.test", "TXT"): ["v=DMARC1; p=bogus; rua=mailto:dmarc@rua.test"],
    }
    for domain in (
        "none.test",
        "quarantine.test",
        "reject.test",
        "pct.test",
        "strict.test",
        "mail.strict.test",
        "nodmarc.test",
        "twice.test",
        "badp.test",
        "rua.test",
        "dnsfail.test",
    ):
        records[(domain, "TXT")] = [SPF_RECORD]
    with TestDnsServer(records) as server:
        server.set_rcode("servfail.test", "TXT", "SERVFAIL")
        server.set_rcode("tmp._domainkey.example.com", "TXT", "SERVFAIL")
        server.set_rcode("_dmarc.dnsfail.test", "TXT", "SERVFAIL")
        server.set_rcode("timeout.test", "TXT", "TIMEOUT")
        yield server


def make_policy(zone: TestDnsServer, **table: Any) -> SenderAuthentication:
    """The policy built the way the gateway builds it, pointed at the test DNS server."""
    return SenderAuthentication(
        gateway_config.build(
            {"myhostname": AUTHSERV_ID, "dns_nameservers": [f"127.0.0.1:{zone.port}"], "sender_auth": table}
        )
    )


@pytest.fixture(scope="module")
def policy(zone: TestDnsServer) -> SenderAuthentication:
    return make_policy(zone)


# ---- helpers ----------------------------------------------------------------


def mail(author: str = "Alice <alice@example.com>", body: bytes = b"Hello.\r\n", extra: bytes = b"") -> bytes:
    """A small CRLF message; ``extra`` is header bytes (CRLF-terminated) put on top."""
    head = f"From: {author}\r\nTo: bob@example.net\r\nSubject: test\r\n" if author else "To: bob@example.net\r\n"
    return (
        extra + head.encode() + b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <t1@example.com>\r\n\r\n" + body
    )


def sign(
    message: bytes, key: bytes, domain: str = "example.com", selector: str = "sel", algorithm: bytes = b"rsa-sha256"
) -> bytes:
    signature = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key,
        signature_algorithm=algorithm,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return signature + message


def run(
    policy: SenderAuthentication,
    message: bytes,
    sender: str = "alice@example.com",
    ip: str = GOOD_IP,
    helo: str = "mail.example.com",
    trusted: bool = False,
) -> Verdict:
    client = ClientInfo(ipaddress.ip_address(ip), 40000, "smtp", helo=helo, trusted=trusted)
    ctx = PolicyContext(client, Envelope(sender, ["bob@example.net"]), queue_id="TESTQUEUEID")
    return asyncio.run(policy.on_data(ctx, message))


def our_value(verdict: Verdict) -> str:
    """The value of the one Authentication-Results field the verdict prepends."""
    values = [value for name, value in verdict.headers.prepend if name == AR_HEADER]
    assert len(values) == 1, verdict
    assert all(len(line) <= 78 for line in f"{AR_HEADER}: {values[0]}".split("\r\n"))
    assert re.fullmatch(r"[^\r\n]*(\r\n\t[^\r\n]+)*", values[0]), "folded with CRLF + tab only"
    return values[0]


def results(verdict: Verdict) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """``{method: [(result, {"ptype.property": value})]}`` from our field, parsed by authres."""
    parsed = authres.AuthenticationResultsHeader.parse(f"{AR_HEADER}: " + our_value(verdict).replace("\r\n", ""))
    assert parsed.authserv_id == AUTHSERV_ID
    found: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for result in parsed.results:
        properties = {f"{p.type}.{p.name}": p.value for p in result.properties}
        found.setdefault(result.method, []).append((result.result, properties))
    return found


def comment_of(verdict: Verdict, method: str) -> str:
    match = re.search(rf"\b{method}=\w+ \(([^)]*)\)", our_value(verdict).replace("\r\n\t", " "))
    return match.group(1) if match else ""


def one(verdict: Verdict, method: str) -> tuple[str, dict[str, str]]:
    found = results(verdict)[method]
    assert len(found) == 1, found
    return found[0]


# ---- SPF --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "ip", "expected"),
    [
        ("alice@example.com", GOOD_IP, "pass"),
        ("alice@example.com", BAD_IP, "fail"),
        ("a@softfail.test", GOOD_IP, "softfail"),
        ("a@neutral.test", GOOD_IP, "neutral"),
        ("a@nospf.test", GOOD_IP, "none"),  # the name exists, no TXT
        ("a@nxdomain.test", GOOD_IP, "none"),  # NXDOMAIN
        ("a@servfail.test", GOOD_IP, "temperror"),
        ("a@broken.test", GOOD_IP, "permerror"),
    ],
)
def test_spf_results(policy: SenderAuthentication, sender: str, ip: str, expected: str) -> None:
    verdict = run(policy, mail(), sender=sender, ip=ip)
    assert one(verdict, "spf") == (expected, {"smtp.mailfrom": sender.partition("@")[2]})


def test_spf_checks_helo_for_the_null_sender(policy: SenderAuthentication) -> None:
    verdict = run(policy, mail(), sender="", ip=HELO_IP, helo="mx.example.org")
    assert one(verdict, "spf") == ("pass", {"smtp.helo": "mx.example.org"})
    verdict = run(policy, mail(), sender="", ip=BAD_IP, helo="mx.example.org")
    assert one(verdict, "spf") == ("fail", {"smtp.helo": "mx.example.org"})
    # The HELO name stands in for the MAIL FROM domain in DMARC alignment too (RFC 7208 §2.4).
    verdict = run(policy, mail(), sender="", ip=GOOD_IP, helo="bounce.example.com")
    assert one(verdict, "spf") == ("pass", {"smtp.helo": "bounce.example.com"})
    assert one(verdict, "dmarc")[0] == "pass"


def test_spf_temperror_on_a_dns_timeout(zone: TestDnsServer) -> None:
    quick = make_policy(zone, timeout="2s")  # 0.25 s per query
    verdict = run(quick, mail(), sender="a@timeout.test")
    assert one(verdict, "spf") == ("temperror", {"smtp.mailfrom": "timeout.test"})


def test_spf_none_for_an_address_literal_helo(policy: SenderAuthentication, zone: TestDnsServer) -> None:
    before = len(zone.queries)
    verdict = run(policy, mail(author=""), sender="", ip=BAD_IP, helo="[198.51.100.7]")
    assert one(verdict, "spf") == ("none", {"smtp.helo": "[198.51.100.7]"})
    assert len(zone.queries) == before  # nothing to look up


# ---- DKIM -------------------------------------------------------------------


def test_dkim_pass(policy: SenderAuthentication, private_key: bytes) -> None:
    verdict = run(policy, sign(mail(), private_key), ip=BAD_IP)
    assert one(verdict, "dkim") == ("pass", {"header.d": "example.com", "header.s": "sel", "header.a": "rsa-sha256"})
    assert one(verdict, "spf")[0] == "fail"
    assert one(verdict, "dmarc") == ("pass", {"header.from": "example.com"})  # aligned DKIM is enough
    assert verdict.action is Action.CONTINUE


def test_dkim_fail_on_a_tampered_body(policy: SenderAuthentication, private_key: bytes) -> None:
    tampered = sign(mail(), private_key).replace(b"Hello.", b"Hullo.")
    verdict = run(policy, tampered, ip=BAD_IP)
    assert one(verdict, "dkim")[0] == "fail"
    assert comment_of(verdict, "dkim") == "body hash mismatch"


def test_dkim_none_for_an_unsigned_message(policy: SenderAuthentication) -> None:
    verdict = run(policy, mail())
    assert one(verdict, "dkim") == ("none", {})
    assert "\tdkim=none;" in our_value(verdict)


def test_dkim_temperror_when_the_key_lookup_fails(policy: SenderAuthentication, private_key: bytes) -> None:
    verdict = run(policy, sign(mail(), private_key, selector="tmp"), ip=BAD_IP)
    assert one(verdict, "dkim") == (
        "temperror",
        {"header.d": "example.com", "header.s": "tmp", "header.a": "rsa-sha256"},
    )
    # The aligned signature could not be checked: no DMARC failure on a DNS hiccup.
    assert one(verdict, "dmarc")[0] == "temperror"
    assert verdict.headers.prepend == ((AR_HEADER, our_value(verdict)),)


@pytest.mark.parametrize(
    ("selector", "algorithm"),
    [
        ("missing", b"rsa-sha256"),  # no key record (NXDOMAIN)
        ("badkey", b"rsa-sha256"),  # a key record that does not parse
        ("sel", b"rsa-sha1"),  # RFC 8301 §3.1
    ],
)
def test_dkim_permerror(policy: SenderAuthentication, private_key: bytes, selector: str, algorithm: bytes) -> None:
    verdict = run(policy, sign(mail(), private_key, selector=selector, algorithm=algorithm), ip=BAD_IP)
    assert one(verdict, "dkim")[0] == "permerror"


def test_dkim_permerror_when_from_is_not_signed(policy: SenderAuthentication, private_key: bytes) -> None:
    signed = sign(mail(), private_key)
    assert b"h=from : to" in signed
    verdict = run(policy, signed.replace(b"h=from : to", b"h=to"), ip=BAD_IP)
    assert one(verdict, "dkim")[0] == "permerror"
    assert comment_of(verdict, "dkim") == "From field not signed"


def test_dkim_reports_every_signature_in_order(policy: SenderAuthentication, private_key: bytes) -> None:
    message = sign(sign(mail(), private_key), private_key, domain="other.test")
    verdict = run(policy, message, ip=BAD_IP)
    assert [(r, p["header.d"]) for r, p in results(verdict)["dkim"]] == [
        ("permerror", "other.test"),
        ("pass", "example.com"),
    ]
    assert one(verdict, "dmarc")[0] == "pass"


# ---- DMARC ------------------------------------------------------------------


def test_dmarc_pass_by_aligned_spf_relaxed(policy: SenderAuthentication) -> None:
    verdict = run(policy, mail(), sender="bounces@bounce.example.com", ip=GOOD_IP)
    assert one(verdict, "spf") == ("pass", {"smtp.mailfrom": "bounce.example.com"})
    assert one(verdict, "dkim")[0] == "none"
    assert one(verdict, "dmarc") == ("pass", {"header.from": "example.com"})
    assert comment_of(verdict, "dmarc") == "p=reject sp=quarantine dis=none"
    assert QUARANTINE_HEADER not in verdict.headers.prepend


def test_dmarc_strict_spf_alignment(policy: SenderAuthentication) -> None:
    exact = run(policy, mail("a@strict.test"), sender="a@strict.test")
    assert one(exact, "dmarc")[0] == "pass"
    subdomain = run(policy, mail("a@strict.test"), sender="a@mail.strict.test")
    assert one(subdomain, "spf")[0] == "pass"
    assert one(subdomain, "dmarc")[0] == "fail"  # aspf=s: mail.strict.test is not strict.test


def test_dmarc_dkim_alignment_relaxed_and_strict(policy: SenderAuthentication, private_key: bytes) -> None:
    relaxed = run(policy, sign(mail("a@sub.example.com"), private_key), sender="a@sub.example.com", ip=BAD_IP)
    assert one(relaxed, "dkim")[0] == "pass"
    assert one(relaxed, "dmarc") == ("pass", {"header.from": "sub.example.com"})
    strict = run(
        policy, sign(mail("a@strict.test"), private_key, domain="mail.strict.test"), sender="a@strict.test", ip=BAD_IP
    )
    assert one(strict, "dkim") == (
        "pass",
        {"header.d": "mail.strict.test", "header.s": "sel", "header.a": "rsa-sha256"},
    )
    assert one(strict, "dmarc")[0] == "fail"  # adkim=s


def test_dmarc_fail_with_p_none_only_reports(policy: SenderAuthentication) -> None:
    verdict = run(policy, mail("a@none.test"), sender="a@none.test", ip=BAD_IP)
    assert one(verdict, "dmarc") == ("fail", {"header.from": "none.test"})
    assert comment_of(verdict, "dmarc") == "p=none dis=none"
    assert verdict.action is Action.CONTINUE
    assert QUARANTINE_HEADER not in verdict.headers.prepend


@pytest.mark.parametrize("domain", ["quarantine.test", "reject.test"])
def test_dmarc_fail_is_tagged_by_default(policy: SenderAuthentication, domain: str) -> None:
    verdict = run(policy, mail(f"a@{domain}"), sender=f"a@{domain}", ip=BAD_IP)
    assert one(verdict, "dmarc") == ("fail", {"header.from": domain})
    assert comment_of(verdict, "dmarc") == f"p={domain.split('.')[0]} dis={domain.split('.')[0]}"
    assert verdict.action is Action.CONTINUE
    assert verdict.headers.prepend[1] == QUARANTINE_HEADER
    assert verdict.headers.remove == (QUARANTINE_HEADER[0],)


def test_dmarc_reject(zone: TestDnsServer) -> None:
    strict = make_policy(zone, dmarc_reject=True)
    verdict = run(strict, mail("a@reject.test"), sender="a@reject.test", ip=BAD_IP)
    assert verdict.action is Action.REJECT
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.status) == (550, "5.7.1")
    assert "DMARC policy of reject.test" in verdict.reply.text
    assert verdict.reason == "dmarc_reject"
    # p=quarantine is not rejected, and a passing message goes through.
    assert run(strict, mail("a@quarantine.test"), sender="a@quarantine.test", ip=BAD_IP).action is Action.CONTINUE
    assert run(strict, mail("a@reject.test"), sender="a@reject.test", ip=GOOD_IP).action is Action.CONTINUE


def test_dmarc_quarantine_hold(zone: TestDnsServer) -> None:
    hold = make_policy(zone, dmarc_quarantine="hold")
    verdict = run(hold, mail("a@quarantine.test"), sender="a@quarantine.test", ip=BAD_IP)
    assert verdict.action is Action.HOLD
    assert verdict.reason == "dmarc_quarantine"
    assert one(verdict, "dmarc")[0] == "fail"  # held mail keeps our header
    assert QUARANTINE_HEADER not in verdict.headers.prepend
    quiet = make_policy(zone, dmarc_quarantine="none")
    verdict = run(quiet, mail("a@quarantine.test"), sender="a@quarantine.test", ip=BAD_IP)
    assert verdict.action is Action.CONTINUE and QUARANTINE_HEADER not in verdict.headers.prepend


def test_dmarc_none_without_a_record(policy: SenderAuthentication) -> None:
    verdict = run(policy, mail("a@nodmarc.test"), sender="a@nodmarc.test", ip=BAD_IP)
    assert one(verdict, "dmarc") == ("none", {"header.from": "nodmarc.test"})
    assert verdict.action is Action.CONTINUE and QUARANTINE_HEADER not in verdict.headers.prepend


def test_dmarc_organizational_domain_fallback_honours_sp(zone: TestDnsServer) -> None:
    strict = make_policy(zone, dmarc_reject=True)
    before = len(zone.queries)
    verdict = run(strict, mail("a@sub.example.com"), sender="a@sub.example.com", ip=BAD_IP)
    dmarc_queries = [name for name, rdtype, _ in zone.queries[before:] if name.startswith("_dmarc.")]
    assert dmarc_queries == ["_dmarc.sub.example.com", "_dmarc.example.com"]
    assert one(verdict, "dmarc") == ("fail", {"header.from": "sub.example.com"})
    assert comment_of(verdict, "dmarc") == "p=reject sp=quarantine dis=quarantine"
    assert verdict.action is Action.CONTINUE  # sp=quarantine, not p=reject
    assert QUARANTINE_HEADER in verdict.headers.prepend
    # The organizational domain itself gets p=.
    assert run(strict, mail(), sender="alice@example.com", ip=BAD_IP).action is Action.REJECT


def test_dmarc_pct_zero_applies_the_next_milder_policy(zone: TestDnsServer) -> None:
    strict = make_policy(zone, dmarc_reject=True)
    verdict = run(strict, mail("a@pct.test"), sender="a@pct.test", ip=BAD_IP)
    assert comment_of(verdict, "dmarc") == "p=reject dis=quarantine"
    assert verdict.action is Action.CONTINUE and QUARANTINE_HEADER in verdict.headers.prepend


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("twice.test", "permerror"),  # two v=DMARC1 records
        ("badp.test", "permerror"),  # p=bogus and no rua=
        ("rua.test", "fail"),  # p=bogus with rua=: treated as p=none
        ("dnsfail.test", "temperror"),  # SERVFAIL at _dmarc
    ],
)
def test_dmarc_record_errors(policy: SenderAuthentication, domain: str, expected: str) -> None:
    verdict = run(policy, mail(f"a@{domain}"), sender=f"a@{domain}", ip=BAD_IP)
    assert one(verdict, "dmarc") == (expected, {"header.from": domain})
    assert verdict.action is Action.CONTINUE and QUARANTINE_HEADER not in verdict.headers.prepend


def test_dmarc_checks_every_from_domain(zone: TestDnsServer, private_key: bytes) -> None:
    strict = make_policy(zone, dmarc_reject=True)
    message = sign(mail("alice@example.com, Bob <bob@reject.test>"), private_key)
    verdict = run(strict, message, ip=BAD_IP)
    assert results(verdict)["dmarc"] == [
        ("pass", {"header.from": "example.com"}),
        ("fail", {"header.from": "reject.test"}),
    ]
    assert verdict.action is Action.REJECT and "reject.test" in verdict.reply.text  # type: ignore[union-attr]


def test_dmarc_none_without_a_from_field(policy: SenderAuthentication) -> None:
    verdict = run(policy, mail(author=""))
    assert one(verdict, "dmarc") == ("none", {})
    assert comment_of(verdict, "dmarc") == "no From field"


def test_author_domains() -> None:
    assert from_domains(mail("=?utf-8?q?J=C3=B6rg?= <j@Bücher.Example.>")) == (["xn--bcher-kva.example"], "")
    assert from_domains(mail("a@one.test", extra=b"From: b@two.test\r\n")) == (["two.test", "one.test"], "")
    assert from_domains(mail("a@one.test, b@ONE.test")) == (["one.test"], "")
    assert from_domains(mail("undisclosed-recipients:;")) == ([], "no domain in From")
    assert from_domains(mail("a@[192.0.2.1]")) == ([], "no domain in From")


def test_dmarc_record_parsing_and_organizational_domains() -> None:
    record = parse_record("v=DMARC1; p=Quarantine; sp=reject; adkim=s; aspf=x; pct=150; fo=1")
    assert (record.policy, record.subdomain_policy, record.adkim, record.aspf, record.pct) == (
        "quarantine",
        "reject",
        "s",
        "r",
        100,
    )
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("Mail.Example.COM.") == "example.com"
    assert organizational_domain("co.uk") == "co.uk"


# ---- the Authentication-Results field ---------------------------------------


def test_forged_authentication_results_of_ours_are_removed(policy: SenderAuthentication, private_key: bytes) -> None:
    forged = (
        b"Authentication-Results: MX.GW.Test; spf=pass smtp.mailfrom=example.com;\r\n"
        b"\tdkim=pass header.d=example.com\r\n"
        b"Authentication-Results: (forged) mx.gw.test; dmarc=pass header.from=example.com\r\n"
        b'Authentication-Results: "mx.gw.test"; dmarc=pass\r\n'
        b"Authentication-Results: other.example; dkim=pass header.d=example.com\r\n"
        b"Authentication-Results: mx.gw.test.other.example; spf=pass\r\n"
    )
    message = sign(mail(extra=forged), private_key)
    verdict = run(policy, message, ip=BAD_IP)
    assert len(verdict.headers.drop) == 3
    edited = apply_edits(message, b"", (verdict.headers,))
    fields = [field for field in raw_fields(edited) if field_name(field) == "authentication-results"]
    ids = [authserv_id_of(field_value(field)) for field in fields]
    assert ids == [AUTHSERV_ID, "other.example", "mx.gw.test.other.example"]
    assert field_value(fields[0]) == our_value(verdict).replace("\r\n", "")
    assert edited[header_end(edited) :] == message[header_end(message) :]
    assert one(verdict, "dkim")[0] == "pass"  # dropping fields above the signature breaks nothing


def test_authserv_id_parsing() -> None:
    assert authserv_id_of("example.net; spf=pass") == "example.net"
    assert authserv_id_of(" (c (nested)) example.net 1; none") == "example.net"
    assert authserv_id_of('"quoted.example" ; none') == "quoted.example"
    assert authserv_id_of(";") is None


def test_trusted_clients_are_skipped(policy: SenderAuthentication, zone: TestDnsServer, private_key: bytes) -> None:
    before = len(zone.queries)
    message = sign(mail(extra=b"Authentication-Results: mx.gw.test; spf=pass\r\n"), private_key)
    assert run(policy, message, ip=BAD_IP, trusted=True) is CONTINUE
    assert len(zone.queries) == before


# ---- ARC --------------------------------------------------------------------


def test_arc_is_reported_only_when_enabled(
    zone: TestDnsServer, policy: SenderAuthentication, private_key: bytes
) -> None:
    signed = sign(mail(extra=b"Authentication-Results: other.example; dkim=pass header.d=example.com\r\n"), private_key)
    sealed = b"".join(dkim.arc_sign(signed, b"sel", b"example.com", private_key, b"other.example")) + signed
    assert "arc" not in results(run(policy, sealed, ip=BAD_IP))
    arc = make_policy(zone, arc=True)
    assert one(run(arc, sealed, ip=BAD_IP), "arc")[0] == "pass"
    assert one(run(arc, signed, ip=BAD_IP), "arc")[0] == "none"
    assert one(run(arc, sealed.replace(b"Hello.", b"Hullo."), ip=BAD_IP), "arc")[0] == "fail"


# ---- configuration and failures ---------------------------------------------


def test_defaults(policy: SenderAuthentication) -> None:
    assert policy.authserv_id == AUTHSERV_ID
    assert (policy.dmarc_reject, policy.dmarc_quarantine, policy.arc) == (False, "tag", False)
    assert (policy.timeout, policy.on_error) == (30.0, "tempfail")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("authserv_id", "mx example"),
        ("authserv_id", "mx;example"),
        ("dmarc_reject", "yes"),
        ("dmarc_quarantine", "junk"),
        ("arc", 1),
        ("timeout", "0s"),
        ("on_error", "ignore"),
        ("reject", True),
    ],
)
def test_bad_configuration(zone: TestDnsServer, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        make_policy(zone, **{key: value})
    assert error.value.key == f"sender_auth.{key}"


def test_a_broken_resolver_is_a_scanner_error(zone: TestDnsServer) -> None:
    broken = make_policy(zone)
    broken.resolver = object()  # type: ignore[assignment]
    with pytest.raises(ScannerError):
        run(broken, mail())
    with pytest.raises(ScannerError):  # no SPF lookup (address literal HELO): DMARC hits it
        run(broken, mail(), sender="", helo="[192.0.2.1]")


# ---- the corpus -------------------------------------------------------------


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[str(p.relative_to(CORPUS)) for p in CORPUS_FILES])
def test_corpus(policy: SenderAuthentication, path: Path) -> None:
    message = re.sub(rb"\r?\n", b"\r\n", path.read_bytes())
    verdict = run(policy, message, sender="sender@corpus.test", ip=BAD_IP, helo="client.corpus.test")
    assert verdict.action is Action.CONTINUE
    edited = apply_edits(message, b"", (verdict.headers,))
    ours = [
        field
        for field in raw_fields(edited)
        if field_name(field) == "authentication-results"
        and (authserv_id_of(field_value(field)) or "").lower() == AUTHSERV_ID
    ]
    assert len(ours) == 1
    assert one(verdict, "spf") == ("none", {"smtp.mailfrom": "corpus.test"})
    assert edited[header_end(edited) :] == message[header_end(message) :]
