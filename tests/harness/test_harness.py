"""Tests of the test harness itself: the SMTP sink, the loopback DNS server, the free-port picker and the
Debian mirror the container tests' base image comes from (read from apt's sources)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
from collections.abc import Iterator

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.rdatatype
import dns.resolver
import pytest
import trustme

from tests.harness.debian_base_image import debian_mirror
from tests.harness.dns_server import TestDnsServer
from tests.harness.ports import free_ports
from tests.harness.smtp_sink import ReceivedMessage, SmtpSink

# Leading dot (dot-stuffing), a line that is only ".", 8-bit bytes, a long line:
# what arrives must be these bytes exactly.
RAW_MESSAGE = (
    b"From: a@example.com\r\n"
    b"To: b@example.org\r\n"
    b"Subject: exact bytes\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b"caf\xc3\xa9 \xff raw 8-bit\r\n" + b"x" * 900 + b"\r\n"
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sink.test", "127.0.0.1", "::1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def _client(sink: SmtpSink) -> smtplib.SMTP:
    return smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=10)


# -- SMTP sink -----------------------------------------------------------------


def test_exact_bytes_arrive(sink: SmtpSink) -> None:
    assert sink.port > 0
    with _client(sink) as client:
        client.sendmail("a@example.com", ["b@example.org", "C@Example.org"], RAW_MESSAGE)

    [msg] = sink.wait_for_messages(1)
    assert isinstance(msg, ReceivedMessage)
    assert msg.data == RAW_MESSAGE
    assert msg.mail_from == "a@example.com"
    assert msg.rcpt_tos == ["b@example.org", "C@Example.org"]
    assert msg.peer[0] == "127.0.0.1"
    assert msg.tls is False
    assert msg.auth_user is None
    assert msg.helo == "client.test"
    assert sink.delivered == {"b@example.org": 1, "c@example.org": 1}


def test_null_sender_and_mail_options(sink: SmtpSink) -> None:
    with _client(sink) as client:
        client.sendmail("<>", ["b@example.org"], RAW_MESSAGE, mail_options=["BODY=8BITMIME", "SMTPUTF8"])
    [msg] = sink.wait_for_messages(1)
    assert msg.mail_from == ""
    assert "BODY=8BITMIME" in msg.mail_options
    assert "SMTPUTF8" in msg.mail_options
    assert any(o.startswith("SIZE=") for o in msg.mail_options)


def test_scripted_rcpt_451_then_accepted(sink: SmtpSink) -> None:
    sink.rcpt_replies["b@example.org"] = ["451 4.3.0 try later", None]

    with _client(sink) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail("a@example.com", ["B@example.org"], RAW_MESSAGE)
        assert info.value.recipients["B@example.org"] == (451, b"4.3.0 try later")
        client.rset()
        assert client.sendmail("a@example.com", ["B@example.org"], RAW_MESSAGE) == {}

    [msg] = sink.wait_for_messages(1)
    assert msg.rcpt_tos == ["B@example.org"]
    assert sink.attempts == {"b@example.org": 2}
    assert sink.data_attempts == {"b@example.org": 1}
    assert sink.delivered == {"b@example.org": 1}
    assert sink.messages_for("b@EXAMPLE.org") == [msg]


def test_partial_rcpt_refusal_keeps_accepted_recipients(sink: SmtpSink) -> None:
    sink.rcpt_replies["bad@example.org"] = ["550 5.1.1 no such user"]
    with _client(sink) as client:
        refused = client.sendmail("a@example.com", ["bad@example.org", "ok@example.org"], RAW_MESSAGE)
    assert refused == {"bad@example.org": (550, b"5.1.1 no such user")}
    [msg] = sink.wait_for_messages(1)
    assert msg.rcpt_tos == ["ok@example.org"]


def test_scripted_data_reply_is_not_recorded(sink: SmtpSink) -> None:
    sink.data_replies.append("554 5.6.0 rejected")
    with _client(sink) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
        assert info.value.smtp_code == 554
        client.rset()
        client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
    assert len(sink.wait_for_messages(1)) == 1
    assert sink.data_attempts == {"b@example.org": 2}
    assert sink.delivered == {"b@example.org": 1}


def test_refuse_all_421_closes_the_connection(sink: SmtpSink) -> None:
    sink.refuse_all = "421 4.3.2 down"
    client = _client(sink)
    try:
        client.ehlo()
        assert client.mail("a@example.com") == (421, b"4.3.2 down")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    finally:
        client.close()

    sink.refuse_all = None
    with _client(sink) as client:
        client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
    assert len(sink.wait_for_messages(1)) == 1


def test_refuse_all_5xx(sink: SmtpSink) -> None:
    sink.refuse_all = "554 5.7.1 go away"
    with _client(sink) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
    assert info.value.smtp_code == 554
    assert sink.messages == []
    assert sink.attempts == {}


def test_wait_for_messages_times_out_with_a_description(sink: SmtpSink) -> None:
    sink.rcpt_replies["b@example.org"] = ["452 4.2.2 full"]
    with _client(sink) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
    with pytest.raises(AssertionError, match=r"expected 1 message\(s\).*got 0") as info:
        sink.wait_for_messages(1, timeout=0.2)
    assert "'b@example.org': 1" in str(info.value)


def test_port_is_known_before_start_and_kept_across_restart() -> None:
    sink = SmtpSink()
    port = sink.port
    try:
        assert port > 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        sink.start()
        with _client(sink) as client:
            assert client.noop()[0] == 250
        sink.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        sink.start()
        assert sink.port == port
        with _client(sink) as client:
            client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
        assert len(sink.wait_for_messages(1)) == 1
    finally:
        sink.stop()
    sink.stop()  # idempotent


def test_starttls_with_verified_certificate(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with SmtpSink(tls_context=server_tls) as sink, _client(sink) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=client_tls)  # verifies the chain and 127.0.0.1
        client.ehlo()
        client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
        [msg] = sink.wait_for_messages(1)
    assert msg.tls is True
    assert msg.data == RAW_MESSAGE


def test_starttls_certificate_name_is_sink_test(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with SmtpSink(tls_context=server_tls) as sink:
        raw = socket.create_connection((sink.host, sink.port), timeout=5)
        with raw:
            f = raw.makefile("rb")
            assert f.readline().startswith(b"220 sink.test")
            raw.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            assert f.readline().startswith(b"220")
            with client_tls.wrap_socket(raw, server_hostname="sink.test") as tls:
                assert tls.version() is not None


def test_auth_after_starttls_records_user(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    users = {"relayuser": "s3cret", "other": "pw"}
    with SmtpSink(tls_context=server_tls, auth=users) as sink:
        with _client(sink) as client:
            client.ehlo()
            assert not client.has_extn("auth")  # not offered in clear text
            client.starttls(context=client_tls)
            client.ehlo()
            assert {"PLAIN", "LOGIN"} <= set(client.esmtp_features["auth"].split())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("relayuser", "wrong")
            client.login("relayuser", "s3cret")  # AUTH PLAIN
            client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
        with _client(sink) as client:
            client.starttls(context=client_tls)
            client.ehlo()
            client.user, client.password = "other", "pw"
            client.auth("LOGIN", client.auth_login)
            client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
        with _client(sink) as client:  # authentication is optional by default
            client.starttls(context=client_tls)
            client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
        messages = sink.wait_for_messages(3)
    assert [m.auth_user for m in messages] == ["relayuser", "other", None]
    assert all(m.tls for m in messages)


def test_auth_required(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with SmtpSink(tls_context=server_tls, auth={"u": "p"}, auth_required=True) as sink:
        with _client(sink) as client:
            client.starttls(context=client_tls)
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
            assert info.value.smtp_code == 530
        assert sink.messages == []


def test_ipv6_sink() -> None:
    try:
        sink = SmtpSink("::1")
    except OSError:
        pytest.fail("this machine has no IPv6 loopback (::1); the test needs it")
    with sink, smtplib.SMTP("::1", sink.port, local_hostname="client.test", timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.org"], RAW_MESSAGE)
        [msg] = sink.wait_for_messages(1)
    assert msg.peer[0] == "::1"


# -- DNS server ----------------------------------------------------------------

LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 600  # > 255 octets: several character-strings

RECORDS = {
    ("example.com", "MX"): ["10 mx1.example.com.", "20 mx2.example.com"],
    ("MX1.example.com.", "A"): ["127.0.0.1"],
    ("mx2.example.com", "A"): ["127.0.0.2"],
    ("mx2.example.com", "AAAA"): ["::1"],
    ("example.com", "TXT"): ["v=spf1 ip4:127.0.0.0/8 -all"],
    ("sel._domainkey.example.com", "TXT"): [LONG_TXT],
    ("alias.example.com", "CNAME"): ["mx1.example.com."],
    ("127.0.0.1", "PTR"): ["mx1.example.com."],
}


@pytest.fixture
def dns_server() -> Iterator[TestDnsServer]:
    with TestDnsServer(RECORDS) as server:
        yield server


def _txt(answer: dns.resolver.Answer) -> list[str]:
    return [b"".join(r.strings).decode() for r in answer]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_sync_resolver(dns_server: TestDnsServer, tcp: bool) -> None:
    res = dns_server.resolver()
    mx = res.resolve("example.com", "MX", tcp=tcp)
    assert sorted((r.preference, r.exchange.to_text()) for r in mx) == [
        (10, "mx1.example.com."),
        (20, "mx2.example.com."),
    ]
    assert mx.response.flags & dns.flags.AA
    assert [r.address for r in res.resolve("Mx1.Example.COM.", "A", tcp=tcp)] == ["127.0.0.1"]
    assert [r.address for r in res.resolve("mx2.example.com", "AAAA", tcp=tcp)] == ["::1"]
    assert _txt(res.resolve("example.com", "TXT", tcp=tcp)) == ["v=spf1 ip4:127.0.0.0/8 -all"]

    long_answer = res.resolve("sel._domainkey.example.com", "TXT", tcp=tcp)
    [rdata] = long_answer
    assert [len(s) for s in rdata.strings] == [255, 255, len(LONG_TXT) - 510]
    assert _txt(long_answer) == [LONG_TXT]

    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("nope.example.com", "A", tcp=tcp)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("elsewhere.invalid", "MX", tcp=tcp)
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("mx1.example.com", "MX", tcp=tcp)  # name exists, other type
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("_domainkey.example.com", "TXT", tcp=tcp)  # empty non-terminal

    cname = res.resolve("alias.example.com", "A", tcp=tcp)
    assert cname.canonical_name.to_text() == "mx1.example.com."
    assert [r.address for r in cname] == ["127.0.0.1"]
    ptr = res.resolve_address("127.0.0.1", tcp=tcp)
    assert [r.target.to_text() for r in ptr] == ["mx1.example.com."]

    transport = "tcp" if tcp else "udp"
    assert ("example.com", "MX", transport) in dns_server.queries


def test_dns_long_udp_answer_is_truncated_then_retried_over_tcp(
    dns_server: TestDnsServer,
) -> None:
    dns_server.add("big.example.com", "TXT", ["y" * 300, "z" * 300])
    res = dns_server.resolver()
    res.use_edns(False)  # 512-octet UDP limit
    assert sorted(_txt(res.resolve("big.example.com", "TXT"))) == ["y" * 300, "z" * 300]
    assert [q for q in dns_server.queries if q[0] == "big.example.com"] == [
        ("big.example.com", "TXT", "udp"),
        ("big.example.com", "TXT", "tcp"),
    ]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_async_resolver(dns_server: TestDnsServer, tcp: bool) -> None:
    async def lookups() -> None:
        res = dns_server.async_resolver()
        mx = await res.resolve("example.com", "MX", tcp=tcp)
        assert sorted(r.preference for r in mx) == [10, 20]
        assert [r.address for r in await res.resolve("mx1.example.com", "A", tcp=tcp)] == ["127.0.0.1"]
        assert _txt(await res.resolve("sel._domainkey.example.com", "TXT", tcp=tcp)) == [LONG_TXT]
        with pytest.raises(dns.resolver.NXDOMAIN):
            await res.resolve("nope.example.com", "A", tcp=tcp)

    asyncio.run(lookups())
    assert isinstance(dns_server.async_resolver(), dns.asyncresolver.Resolver)


def test_dns_add_remove_and_scripted_failures(dns_server: TestDnsServer) -> None:
    res = dns_server.resolver(lifetime=1.0)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("new.example.net", "A")
    dns_server.add("new.example.net.", "A", ["127.0.0.9"])
    assert [r.address for r in res.resolve("NEW.example.net", "A")] == ["127.0.0.9"]
    dns_server.remove("new.example.net", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("new.example.net", "A")

    dns_server.set_rcode("example.com", "MX", "SERVFAIL")
    with pytest.raises(dns.resolver.NoNameservers):
        res.resolve("example.com", "MX")
    dns_server.set_rcode("example.com", "MX", "TIMEOUT")
    with pytest.raises(dns.resolver.LifetimeTimeout):
        res.resolve("example.com", "MX")
    dns_server.set_rcode("example.com", "MX", None)
    assert len(res.resolve("example.com", "MX")) == 2


def test_dns_restart_keeps_port() -> None:
    server = TestDnsServer({("a.test", "A"): ["127.0.0.1"]})
    with server:
        port = server.port
    with server:
        assert server.port == port
        assert [r.address for r in server.resolver().resolve("a.test", "A")] == ["127.0.0.1"]


def test_dns_rejects_bad_record_values() -> None:
    with pytest.raises(dns.exception.SyntaxError):
        TestDnsServer({("example.com", "MX"): ["not-a-number mx.example.com."]})
    assert dns.rdatatype.from_text("MX") == dns.rdatatype.MX


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    low, high = (int(part) for part in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(not low <= port <= high for port in ports), (low, high, ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if the port was not free
    # an outgoing connection's local port comes from the ephemeral range, so it never takes one of them
    with SmtpSink() as sink, socket.create_connection(("127.0.0.1", sink.port)) as client:
        assert low <= client.getsockname()[1] <= high


def test_debian_mirror_is_read_from_one_line_and_deb822_sources(tmp_path) -> None:
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://other.example/apt stable main\n"
        "deb http://contrib-only.example/debian bookworm contrib\n"
    )
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        "# a comment\nTypes: deb deb-src\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert debian_mirror("bookworm", [one_line, deb822]) == "http://mirror.example/debian"
    assert debian_mirror("stable", [one_line, deb822]) == "http://other.example/apt"
    with pytest.raises(LookupError, match="trixie"):
        debian_mirror("trixie", [one_line, deb822])
