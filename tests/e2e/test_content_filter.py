"""Content filtering end to end: the real gateway with real clamd, spamd and rspamd daemons."""

from __future__ import annotations

import re
import smtplib
from email.message import EmailMessage

import pytest

from gateway.message import mbox_separator
from tests.harness.clamd import ClamdDaemon
from tests.harness.helpers import relay_config
from tests.harness.samples import CORPUS as CORPUS_DIR

INBOUND_CLIENT = "127.0.0.2"  # untrusted: mail to relay_domains takes the inbound pipeline
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CORPUS = sorted(p for p in CORPUS_DIR.rglob("*") if p.is_file() and p.name != "LICENSE")
ADDED_FIELD = re.compile(
    rb"^(Received|X-Virus-Scanned|X-Spam-[A-Za-z]+|X-Scan-Skipped): [^\r\n]*\r\n"
    rb"(?:[ \t][^\r\n]*\r\n)*"
)


def eicar_message() -> bytes:
    message = EmailMessage()
    message["From"] = "sender@internet.example"
    message["To"] = "user@example.net"
    message["Subject"] = "invoice"
    message.set_content("see attachment")
    message.add_attachment(
        ClamdDaemon.eicar_bytes(), maintype="application", subtype="octet-stream", filename="invoice.com"
    )
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def gtube_message() -> bytes:
    return (
        b"From: a@internet.example\r\nTo: user@example.net\r\nSubject: cheap\r\n"
        b"Message-ID: <g@internet.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n" + GTUBE.encode() + b"\r\n"
    )


HAM = (
    b"From: Ann <ann@internet.example>\r\nTo: user@example.net\r\nSubject: lunch\r\n"
    b"Message-ID: <h1@internet.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
    b"See you at noon.\r\n"
)


def scanners_config(
    sink_port: int,
    clamd_address: str,
    spamd,
    rspamd,
    *,
    inbound: str,
    extra: str = "",
    antivirus: str = "",
    rspamd_settings: str = "",
) -> str:
    """Top-level keys (``extra``) and the scanner tables; ``antivirus``/``rspamd_settings`` add table lines."""
    return relay_config(sink_port, extra) + (
        f'[pipeline]\ninbound = {inbound}\noutbound = ["antivirus"]\n'
        f'[antivirus]\nclamd = "{clamd_address}"\n{antivirus}'
        f'[spamassassin]\naddress = "{spamd.host}:{spamd.port}"\n'
        f'[rspamd]\nurl = "{rspamd.url}"\n{rspamd_settings}'
    )


def send(
    port: int,
    message: bytes,
    *,
    source: str = INBOUND_CLIENT,
    sender: str = "a@internet.example",
    recipient: str = "user@example.net",
) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        assert client.rcpt(recipient)[0] == 250, recipient
        return client.data(message)


ALL_SCANNERS = '["header_checks", "antivirus", "spamassassin", "rspamd"]'


def by_subject(messages, subject: bytes) -> bytes:
    """The data of the one received message whose Subject is ``subject``; the relay runs
    several sessions at once, so arrival order is not submission order (as with Postfix)."""
    found = [m.data for m in messages if b"\r\nSubject: " + subject + b"\r\n" in m.data]
    assert len(found) == 1, (subject, [m.data[:200] for m in messages])
    return found[0]


@pytest.fixture
def scanning_gateway(gateway_factory, sink, clamd, spamd, rspamd, tmp_path):
    rules = tmp_path / "header_checks"
    rules.write_text(
        "/^X-Test-Reject: yes/ REJECT 5.7.1 header rule says no\n"
        "/^X-Test-Hold: yes/ HOLD\n/^X-Test-Discard: yes/ DISCARD\n"
        "/^X-Test-Ignore:/ IGNORE\n/^X-Test-Prepend: yes/ PREPEND X-Was-Seen: by header_checks\n"
    )
    config = (
        scanners_config(
            sink.port, clamd.tcp_address, spamd, rspamd, inbound=ALL_SCANNERS, extra='message_size_limit = "50M"\n'
        )
        + f'[header_checks]\nfile = "{rules}"\n'
    )
    with gateway_factory(config) as gateway:
        yield gateway


def test_eicar_attachment_is_rejected_naming_the_signature(scanning_gateway, sink):
    code, text = send(scanning_gateway.port, eicar_message())
    assert code == 554 and text.startswith(b"5.7.1 Virus found: Eicar-Test-Signature"), text
    scanning_gateway.wait_for_log(r"result=reject .*reason=virus detail=Eicar-Test-Signature")
    assert sink.messages == []


@pytest.mark.parametrize("engine", ["spamassassin", "rspamd"])
def test_gtube_is_rejected_by_each_spam_engine(gateway_factory, sink, clamd, spamd, rspamd, engine):
    config = scanners_config(sink.port, clamd.tcp_address, spamd, rspamd, inbound=f'["{engine}"]')
    with gateway_factory(config) as gateway:
        code, text = send(gateway.port, gtube_message())
        assert code == 550 and text.startswith(b"5.7.1"), (code, text)
        gateway.wait_for_log(r"result=reject .*reason=spam")
    assert sink.messages == []


def test_message_between_tag_and_kill_arrives_with_spam_headers(gateway_factory, sink, clamd, spamd, rspamd):
    # A plain ham message scores about 0-1 with both engines here; levels below that make it "spam"
    # that is tagged, and a kill level far above keeps it from being rejected.
    levels = '[spam_levels]\ntag_level = -20.0\ntag2_level = -10.0\nkill_level = 500.0\nsubject_tag = "[SPAM] "\n'
    config = (
        scanners_config(
            sink.port,
            clamd.tcp_address,
            spamd,
            rspamd,
            inbound='["antivirus", "spamassassin", "rspamd"]',
            rspamd_settings="tag_level = -20.0\ntag2_level = -10.0\nkill_level = 500.0\n",
        )
        + levels
    )
    with gateway_factory(config) as gateway:
        code, _ = send(gateway.port, HAM)
        assert code == 250
        (message,) = sink.wait_for_messages(1)
    assert b"\r\nX-Spam-Flag: YES\r\n" in message.data
    assert re.search(rb"\r\nX-Spam-Status: Yes, score=-?\d", message.data)
    assert re.search(rb"\r\nX-Spam-Score: -?\d+\.\d{3}\r\n", message.data)
    assert b"\r\nSubject: [SPAM] lunch\r\n" in message.data
    assert b"\r\nX-Virus-Scanned: " in message.data
    assert message.data.endswith(b"\r\n\r\nSee you at noon.\r\n")


def test_outbound_pipeline_is_separate(gateway_factory, sink, clamd, spamd, rspamd):
    config = scanners_config(sink.port, clamd.tcp_address, spamd, rspamd, inbound='["spamassassin"]')
    with gateway_factory(config) as gateway:
        # trusted client relaying out: only the antivirus runs, so GTUBE passes ...
        assert send(gateway.port, gtube_message(), source="127.0.0.1", recipient="x@elsewhere.org")[0] == 250
        # ... but a virus does not
        assert send(gateway.port, eicar_message(), source="127.0.0.1", recipient="x@elsewhere.org")[0] == 554
        # and inbound, GTUBE is spam
        assert send(gateway.port, gtube_message())[0] == 550
    assert [m.rcpt_tos for m in sink.messages] == [["x@elsewhere.org"]]


@pytest.mark.parametrize(
    "header, expect",
    [
        (b"X-Test-Reject: yes", "reject"),
        (b"X-Test-Hold: yes", "hold"),
        (b"X-Test-Discard: yes", "discard"),
        (b"X-Test-Ignore: drop me", "ignore"),
        (b"X-Test-Prepend: yes", "prepend"),
    ],
)
def test_header_checks_actions_end_to_end(scanning_gateway, sink, header, expect):
    message = HAM.replace(b"Subject: lunch\r\n", b"Subject: lunch\r\n" + header + b"\r\n")
    code, text = send(scanning_gateway.port, message)
    if expect == "reject":
        assert (code, text) == (550, b"5.7.1 header rule says no")
        return
    assert code == 250
    queue_id = text.rsplit(b" ", 1)[1].decode()
    if expect == "hold":
        scanning_gateway.wait_for_log(rf"{queue_id}: .*result=hold")
        assert f"{queue_id}" in scanning_gateway.cli("queue", "list").stdout
        assert "hold" in scanning_gateway.cli("queue", "show", queue_id).stdout
    elif expect == "discard":
        scanning_gateway.wait_for_log(rf"{queue_id}: .*result=discard")
        assert queue_id not in scanning_gateway.cli("queue", "list").stdout
    else:
        (received,) = sink.wait_for_messages(1)
        if expect == "ignore":
            assert b"X-Test-Ignore" not in received.data
        else:
            assert b"\r\nX-Was-Seen: by header_checks\r\n" in received.data and header in received.data
    if expect in ("hold", "discard"):
        assert sink.messages == []


def test_switches_and_bypass_lists(gateway_factory, sink, clamd, spamd, rspamd):
    switches = '[content_filter]\nbypass_domains = ["bypass.example.net"]\nbypass_clients = ["127.0.0.4/32"]\n'
    config = scanners_config(
        sink.port,
        clamd.tcp_address,
        spamd,
        rspamd,
        inbound=ALL_SCANNERS.replace('"header_checks", ', ""),
        extra='relay_domains = ["example.net", "bypass.example.net"]\n',
    )
    config = config.replace('relay_domains = ["example.net"]\n', "") + switches
    with gateway_factory(config, name="bypass") as gateway:
        assert send(gateway.port, eicar_message())[0] == 554
        assert send(gateway.port, eicar_message(), recipient="user@bypass.example.net")[0] == 250
        assert send(gateway.port, gtube_message(), source="127.0.0.4")[0] == 250
    sink.wait_for_messages(2)
    off = config.replace(switches, "[content_filter]\ndisable_virus_checks = true\n")
    with gateway_factory(off, name="novirus") as gateway:
        assert send(gateway.port, eicar_message())[0] == 250  # virus checks off
        assert send(gateway.port, gtube_message())[0] == 550  # spam checks still on
    everything_off = config.replace(switches, "[content_filter]\ndisable_scanning = true\n")
    with gateway_factory(everything_off, name="noscan") as gateway:
        assert send(gateway.port, gtube_message())[0] == 250
        assert send(gateway.port, eicar_message())[0] == 250
    assert len(sink.wait_for_messages(5)) == 5


@pytest.mark.parametrize("on_error", ["tempfail", "pass"])
@pytest.mark.parametrize("scanner", ["antivirus", "rspamd"])
def test_stopping_a_scanner_mid_run(gateway_factory, sink, clamd, spamd, rspamd, scanner, on_error):
    """A scanner of our own is stopped between two messages and started again: ``on_error``
    decides between 451 4.7.1 and passing unscanned; it scans again once it is back."""
    from tests.harness.spam_daemons import RspamdDaemon

    own = ClamdDaemon() if scanner == "antivirus" else RspamdDaemon()
    own.start()
    try:
        settings = f'on_error = "{on_error}"\ntimeout = "5s"\n'
        if scanner == "antivirus":
            config = scanners_config(
                sink.port, own.tcp_address, spamd, rspamd, inbound='["antivirus"]', antivirus=settings
            )
        else:
            config = scanners_config(
                sink.port, clamd.tcp_address, spamd, own, inbound='["rspamd"]', rspamd_settings=settings
            )
        with gateway_factory(config) as gateway:
            assert send(gateway.port, HAM)[0] == 250  # acknowledged while the scanner runs
            own.stop()
            code, text = send(gateway.port, HAM.replace(b"lunch", b"second"))
            if on_error == "tempfail":
                assert (code, text[:5]) == (451, b"4.7.1"), (code, text)
                messages = sink.wait_for_messages(1)
            else:
                assert code == 250
                messages = sink.wait_for_messages(2)
                skipped = f"\r\nX-Scan-Skipped: {scanner} (scanner unavailable)\r\n".encode()
                assert skipped in by_subject(messages, b"second")
            assert b"X-Scan-Skipped" not in by_subject(messages, b"lunch")  # nothing acknowledged was lost
            own.start()
            # scanning again once it is back
            if scanner == "antivirus":
                assert send(gateway.port, eicar_message())[0] == 554
            else:
                code, text = send(gateway.port, gtube_message())
                assert (code, text[:5]) == (550, b"5.7.1"), (code, text)
    finally:
        if scanner == "antivirus":
            own.close()  # stops it and removes its folder
        else:
            own.cleanup()


@pytest.fixture(scope="module")
def corpus_scanning_gateway(tmp_path_factory, clamd, spamd, rspamd):
    from tests.harness.gateway_process import GatewayProcess
    from tests.harness.ports import free_port
    from tests.harness.smtp_sink import SmtpSink

    with SmtpSink() as sink:
        port = free_port()
        folder = tmp_path_factory.mktemp("corpus-scan")
        rules = folder / "header_checks"
        rules.write_text("/^X-Never-Present-Header:/ REJECT\n/^Subject: .*viagra/ REJECT\n")
        # smtpd_data_spill_size below the corpus median (1.2 kB): about half the corpus is checked in memory,
        # the other half from the DATA reader's file (clamd INSTREAM from it, rspamd streamed, header checks mapped)
        config = scanners_config(
            sink.port,
            clamd.tcp_address,
            spamd,
            rspamd,
            inbound=ALL_SCANNERS,
            extra=f'message_size_limit = "50M"\nsmtpd_data_spill_size = {SPILL_SIZE}\n',
            rspamd_settings="tag2_level = 50.0\nkill_level = 50.0\n",
        )
        # Some corpus files are parser test cases with broken headers that SpamAssassin scores 7-10 and
        # rspamd 6-13 (listed with their rules in tests/policies/test_spamassassin.py and
        # test_rspamd.py); tag2/kill well above that
        # keep their Subject and let every message through, while the tag level still adds headers.
        config += f'[header_checks]\nfile = "{rules}"\n[spam_levels]\ntag2_level = 50.0\nkill_level = 50.0\n'
        config += f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\ntls = "none"\n'
        with GatewayProcess(folder / "gw", config) as gateway:
            gateway.port = port
            yield gateway, sink


SPILL_SIZE = 1024


def test_the_corpus_takes_both_ways_through_the_scanners():
    sizes = [path.stat().st_size for path in CORPUS]
    assert 0.2 < sum(size > SPILL_SIZE for size in sizes) / len(sizes) < 0.8


@pytest.mark.parametrize("make, code", [(eicar_message, 554), (gtube_message, 550)], ids=["eicar", "gtube"])
def test_a_file_held_message_is_scanned(corpus_scanning_gateway, make, code):
    # padded past smtpd_data_spill_size: the scanners read it from the DATA reader's file
    message = make().replace(
        b"\r\n\r\n", b"\r\nX-Padding: " + b"p" * 900 + b"\r\n" + b"X-Padding: " + b"q" * 900 + b"\r\n\r\n", 1
    )
    assert len(message) > SPILL_SIZE + 800
    gateway, _ = corpus_scanning_gateway
    got, text = send(gateway.port, message, recipient="scanned@example.net")
    assert got == code, text
    assert b"5.7.1" in text, text


@pytest.mark.parametrize("path", CORPUS, ids=[str(p.relative_to(CORPUS_DIR)) for p in CORPUS])
def test_corpus_passes_clean_and_byte_intact(corpus_scanning_gateway, path):
    gateway, sink = corpus_scanning_gateway
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", path.read_bytes())
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    recipient = f"c{CORPUS.index(path)}@example.net"
    code, text = send(gateway.port, expected, recipient=recipient)
    assert code == 250, text
    (message,) = sink.wait_for_recipient(recipient, timeout=30)
    separator = mbox_separator(expected)  # a leading mbox "From " line stays first
    assert message.data.startswith(separator)
    data = message.data[len(separator) :]
    added = []
    while (match := ADDED_FIELD.match(data)) and (not added or match.group(1) != b"Received"):
        added.append(match.group(1))  # our Received on top, then the policies' fields; then the original
        data = data[match.end() :]
    assert separator + data == expected
    assert b"Received" in added and b"X-Virus-Scanned" in added
    assert b"X-Scan-Skipped" not in added
