"""DKIM signatures of gateway.dkim.signer checked by independent verifiers, on every corpus message.

Each message of ``tests/corpus`` (all files but LICENSE) is turned into CRLF
and gets ``From: Sender <sender@example.com>`` in place of its first From field
(or added on top when it has none); everything else stays byte for byte. It
is dual-signed (rsa-sha256 with ``s=mail``, ed25519-sha256 with
``s=mail-ed25519``) twice: by the signer directly, and by relaying it through
the real gateway (``gateway run`` as a subprocess, trusted client, a real SMTP
sink as relayhost), where the signature also covers the gateway's own
``Received:`` field. Both are then verified by:

* Perl Mail::DKIM 1.20230212 (RSA only: it reports ed25519 as an unsupported
  algorithm), with the key records served by an override of
  ``Mail::DKIM::DNS::query`` (shared/test-peers.md §5) and one perl process for
  all messages;
* rspamd 3.4 (RSA and Ed25519), resolving the keys through a
  :class:`TestDnsServer` on loopback; the scan claims the TEST-NET client
  192.0.2.1 because rspamd skips DKIM for local addresses (test-peers.md §3);
* dkimpy's own verifier (RSA and Ed25519, the latter through PyNaCl).

Exceptions, each with its reason, are in :data:`NOT_SIGNED` (the signer
refuses a header section that is not RFC 5322 syntax) and
:data:`RSPAMD_BREAKS_ON_PURPOSE`; the tests check each reason still holds, so
the lists stay true.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from gateway import config as gateway_config
from gateway.dkim.settings import DkimSettings
from gateway.dkim.signer import DkimSigner
from gateway.message import field_name, insert_fields, mbox_separator, raw_fields
from tests.harness.dns_server import TestDnsServer
from tests.harness.samples import CORPUS, CORPUS_FILES
from tests.harness.spam_daemons import RSPAMD_BIN, RspamdDaemon, require_binary

NEW_FROM = b"From: Sender <sender@example.com>\r\n"
DOMAIN = "example.com"
SELECTORS = {"rsa-sha256": "mail", "ed25519-sha256": "mail-ed25519"}
CLIENT_IP = "192.0.2.1"  # TEST-NET-1: not local, so rspamd runs its DKIM checks
TAMPERED_FROM = "mail-gem/plain_emails/basic_email_lf.eml"  # altered after signing, for the negative checks

# The signer refuses these (sign() gives b""): a header line that is neither a field
# nor a continuation line. Receivers differ on such a line (dkimpy rejects the whole
# message, others join it to the field before or end the header there), so no
# signature would hold everywhere. Value: the offending line.
NOT_SIGNED = {
    # "References: <baz@bar.net>, <invalid.   " then the line "something@bar.net>"
    "mail-gem/error_emails/multiple_references_with_one_invalid.eml": "something@bar.net>",
    # a field name with a space in it
    "mail-gem/plain_emails/raw_email_incorrect_header.eml": "quite Delivered-To: xxx@xxx.xxx",
    # RFC 5322 Appendix A.6.3 with its folding marked by a line "__"
    "mail-gem/rfc2822/example13.eml": "__",
    # RFC 5322 §4.5 obsolete syntax, white space before the colon: relaxed canonicalization
    # would remove it (RFC 6376 §3.4.2), but rspamd 3.4 does not see such fields at all
    # (MISSING_FROM, R_DKIM_REJECT) and dkimpy skips "From  :" as an mbox line
    "extra/obs-wsp-before-colon.eml": "From  : Old Style <old@example.com>",
}

# Not in the corpus: the obsolete syntax case above.
EXTRA = {
    "extra/obs-wsp-before-colon.eml": (
        b"From  : Old Style <old@example.com>\r\nTo    : Mary Smith <mary@example.net>\r\n"
        b"Subject     : Saying Hello\r\nDate  : Fri, 21 Nov 1997 09:55:06 -0600\r\n"
        b"Message-ID  : <1234@local.machine.example>\r\n\r\nThis is a message just to say hello.\r\n"
    ),
}
NAMES = [path.relative_to(CORPUS).as_posix() for path in CORPUS_FILES] + sorted(EXTRA)

SIGNED_NAMES = [name for name in NAMES if name not in NOT_SIGNED]  # what the verifiers get

# Signed and verified by Mail::DKIM and dkimpy, but rspamd 3.4 fails every signature that
# covers a field it deems unique when the message has two of them (Subject, To, Cc and
# Message-ID; not From, Date or Reply-To), on purpose: its log says "header subject is
# intended to be unique by email standards, but we have 2 headers of this type,
# artificially break DKIM check". RFC 5322 §3.6 allows one Subject. Value: that field.
RSPAMD_BREAKS_ON_PURPOSE = {
    "mail-gem/mime_emails/raw_email_with_binary_encoded.eml": "subject",
    "mail-gem/mime_emails/raw_email_with_multipart_mixed_quoted_boundary.eml": "subject",
}

# One perl for all messages: argv = records file ("name<TAB>TXT value" lines), then the
# message files; prints "file<TAB>overall<TAB>d=..;s=..;a=..=result(detail)..." per file.
MAIL_DKIM_VERIFY = r"""
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;
my ($records_file, @files) = @ARGV;
my %txt;
open my $records, "<", $records_file or die "$records_file: $!";
while (my $line = <$records>) {
    chomp $line;
    my ($name, $value) = split /\t/, $line, 2;
    $txt{lc $name} = $value;
}
close $records;
{
    no warnings "redefine";
    # No DNS at all (shared/test-peers.md §5): the async path calls this function too.
    *Mail::DKIM::DNS::query = sub {
        my ($name, $type) = @_;
        $name = lc $name;
        $name =~ s/\.\z//;
        return () unless $type eq "TXT" && exists $txt{$name};
        return Net::DNS::RR->new(name => $name, type => "TXT", txtdata => [unpack("(a250)*", $txt{$name})]);
    };
}
for my $file (@files) {
    open my $in, "<:raw", $file or die "$file: $!";
    my $verifier = Mail::DKIM::Verifier->new;
    while (my $line = <$in>) {
        $line =~ s/\r?\n\z/\015\012/;
        $verifier->PRINT($line);
    }
    $verifier->CLOSE;
    close $in;
    my @signatures = map {
        sprintf "d=%s;s=%s;a=%s=%s(%s)", $_->domain, $_->selector, $_->algorithm, $_->result,
            $_->result_detail // ""
    } $verifier->signatures;
    print join("\t", $file, $verifier->result, @signatures), "\n";
}
"""


def require_nacl() -> None:
    """Fail (not skip) when PyNaCl is missing: dkimpy needs it to verify ed25519-sha256."""
    if importlib.util.find_spec("nacl") is None:
        pytest.fail("PyNaCl is not installed: `pip install pynacl` (dkimpy verifies ed25519 through it)", pytrace=False)


def with_sender(raw: bytes) -> bytes:
    """``raw`` with CRLF line ends and its first From field replaced by (or headed with) NEW_FROM."""
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    offset = 0
    for field in raw_fields(raw):
        if field_name(field) == "from":
            return raw[:offset] + NEW_FROM + raw[offset + len(field) :]
        offset += len(field)
    return NEW_FROM + raw


@dataclass(frozen=True, slots=True)
class SignedCorpus:
    """Prepared and signed messages: name (corpus-relative) → (message, DKIM-Signature fields)."""

    messages: dict[str, tuple[bytes, bytes]]
    records: dict[str, str]  # "<selector>._domainkey.example.com" → TXT value
    directory: Path  # signed messages as files, named by index


_DKIM_FIELDS = re.compile(rb"(?:DKIM-Signature:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*")


def _through_gateway(
    state: Path, messages: dict[str, bytes], extra: str = ""
) -> tuple[dict[str, tuple[bytes, bytes]], dict[str, str]]:
    """Relay each message through a real gateway that dual-signs; split what the sink got into
    (message as relayed, the DKIM-Signature fields the gateway put on top). ``extra``: more config keys."""
    import smtplib

    from prometheus_client.parser import text_string_to_metric_families

    from gateway.dkim.keys import dns_txt_value, list_keys, load_private_key
    from tests.harness.gateway_process import GatewayProcess
    from tests.harness.helpers import http_get
    from tests.harness.ports import free_port
    from tests.harness.smtp_sink import SmtpSink

    result = {}
    with SmtpSink() as sink:
        port = free_port()
        config = (
            f'relayhost = ["[127.0.0.1]:{sink.port}"]\nmynetworks = ["127.0.0.1/32"]\n'
            f'myhostname = "gw.test"\nmessage_size_limit = "50M"\n{extra}'
            f'[dkim]\ndomains = ["{DOMAIN}"]\nalgorithms = {list(SELECTORS)!r}\n'.replace("'", '"')
            + f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\ntls = "none"\n'
        )
        with GatewayProcess(state, config) as gateway:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for index, message in enumerate(messages.values()):
                    assert client.sendmail("sender@example.com", [f"r{index}@elsewhere.org"], message) == {}
            for index, name in enumerate(messages):
                (received,) = sink.wait_for_recipient(f"r{index}@elsewhere.org", timeout=30)
                separator = mbox_separator(received.data)  # fields go below a leading mbox line
                signatures = _DKIM_FIELDS.match(received.data, len(separator)).group(0)
                result[name] = (separator + received.data[len(separator) + len(signatures) :], signatures)
                assert insert_fields(*result[name]) == received.data
            # each field added is counted by domain and algorithm and logged with the queue ID
            signed = sum(1 for _, fields in result.values() if fields)
            _, scrape = http_get(gateway.metrics_url + "/metrics")
            counted = {
                (sample.labels["domain"], sample.labels["algorithm"]): sample.value
                for family in text_string_to_metric_families(scrape)
                for sample in family.samples
                if sample.name == "gateway_dkim_signatures_total"
            }
            assert counted == {(DOMAIN, algorithm): signed for algorithm in SELECTORS}, (counted, signed)
            for algorithm in SELECTORS:
                pattern = rf"[0-9A-F]{{19}}: DKIM-Signature added: d={re.escape(DOMAIN)} a={algorithm}$"
                assert len(gateway.wait_for_log(pattern, count=signed)) == signed, algorithm
    records = {
        f"{key.selector}._domainkey.{key.domain}": dns_txt_value(load_private_key(key.path))
        for key in list_keys(state / "dkim")
    }
    return result, records


@pytest.fixture(scope="module", params=["signer", "gateway", "gateway-file-held"])
def signed_corpus(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> SignedCorpus:
    """Every corpus message dual-signed for example.com with fresh keys: by the signer, or
    relayed through the real gateway (file-held: each message stays in the DATA reader's file and
    the signer reads it from there in chunks, the body hash in one streaming pass)."""
    state = tmp_path_factory.mktemp("dkim-state")
    prepared = {name: EXTRA[name] if name in EXTRA else with_sender((CORPUS / name).read_bytes()) for name in NAMES}
    if request.param.startswith("gateway"):
        spill = "smtpd_data_spill_size = 1\n" if request.param == "gateway-file-held" else ""
        messages, records = _through_gateway(state, prepared, spill)
    else:
        config = gateway_config.build(
            {"state_dir": str(state), "dkim": {"domains": [DOMAIN], "algorithms": list(SELECTORS)}}
        )
        signer = DkimSigner(DkimSettings.from_config(config))
        records = {record.name: record.value for record in signer.prepare()}
        messages = {name: (message, signer.sign(message)) for name, message in prepared.items()}
    assert sorted(records) == sorted(f"{s}._domainkey.{DOMAIN}" for s in SELECTORS.values())
    directory = tmp_path_factory.mktemp("dkim-signed")
    for index, name in enumerate(NAMES):
        message, signature = messages[name]
        (directory / f"{index:03d}.eml").write_bytes(insert_fields(message, signature))
    return SignedCorpus(messages, records, directory)


def test_corpus_is_there() -> None:
    assert len(CORPUS_FILES) > 100, CORPUS
    assert set(NOT_SIGNED) | set(RSPAMD_BREAKS_ON_PURPOSE) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_signed_unless_listed(signed_corpus: SignedCorpus, name: str) -> None:
    """Every message is dual-signed, except the NOT_SIGNED ones, whose reason still holds."""
    message, signature = signed_corpus.messages[name]
    if name in NOT_SIGNED:
        assert signature == b""
        assert NOT_SIGNED[name].encode() + b"\r\n" in message.partition(b"\r\n\r\n")[0] + b"\r\n"
        with pytest.raises(dkim.MessageFormatError):  # one receiver that refuses the header outright
            dkim.DKIM(message)
        return
    assert signature.count(b"DKIM-Signature: ") == 2
    for algorithm, selector in SELECTORS.items():
        assert f"a={algorithm};".encode() in signature
        assert f"s={selector};".encode() in signature


def _signed(signed_corpus: SignedCorpus, name: str) -> bytes:
    message, signature = signed_corpus.messages[name]
    assert signature, name
    return insert_fields(message, signature)


# ---- (a) Perl Mail::DKIM, RSA -------------------------------------------------------------


@pytest.fixture(scope="module")
def mail_dkim_results(signed_corpus: SignedCorpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Mail::DKIM's per-signature results for every signed file, from a single perl run."""
    work = tmp_path_factory.mktemp("mail-dkim")
    script = work / "verify.pl"
    script.write_text(MAIL_DKIM_VERIFY)
    records = work / "records.txt"
    records.write_text("".join(f"{name}\t{value}\n" for name, value in signed_corpus.records.items()))
    message, signature = signed_corpus.messages[TAMPERED_FROM]
    (work / "tampered.eml").write_bytes(insert_fields(message, signature) + b"P.S. added on the way\r\n")
    files = sorted(signed_corpus.directory.iterdir()) + [work / "tampered.eml"]
    done = subprocess.run(
        ["perl", str(script), str(records), *map(str, files)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    results = {}
    for line in done.stdout.splitlines():
        file, _, rest = line.partition("\t")
        stem = Path(file).stem
        results[NAMES[int(stem)] if stem.isdigit() else stem] = rest
    assert len(results) == len(NAMES) + 1, done.stdout + done.stderr
    return results


@pytest.mark.parametrize("name", SIGNED_NAMES)
def test_mail_dkim_verifies_rsa(signed_corpus: SignedCorpus, mail_dkim_results: dict[str, str], name: str) -> None:
    _signed(signed_corpus, name)
    result = mail_dkim_results[name]
    ours = {part for part in result.split("\t") if part.startswith(f"d={DOMAIN};")}
    assert f"d={DOMAIN};s=mail;a=rsa-sha256=pass(pass)" in ours, result
    # Debian 12's Mail::DKIM has no Ed25519: that signature is "invalid", never "fail"
    assert ours & {
        f"d={DOMAIN};s=mail-ed25519;a=ed25519-sha256=" + outcome
        for outcome in ("invalid(invalid (unsupported algorithm ed25519-sha256))", "pass(pass)")
    }, result


def test_mail_dkim_rejects_a_tampered_body(mail_dkim_results: dict[str, str]) -> None:
    """The Mail::DKIM check is not vacuous."""
    result = mail_dkim_results["tampered"]
    assert result.startswith("fail\t"), result
    assert f"d={DOMAIN};s=mail;a=rsa-sha256=fail(fail (body has been altered))" in result.split("\t"), result


# ---- (b) rspamd, RSA and Ed25519 ----------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_rspamd(signed_corpus: SignedCorpus) -> Iterator[RspamdDaemon]:
    """An rspamd resolving through a loopback TestDnsServer that publishes the two key records."""
    require_binary(RSPAMD_BIN)
    records = {(name, "TXT"): [value] for name, value in signed_corpus.records.items()}
    with TestDnsServer(records) as dns_server:
        daemon = RspamdDaemon(dns=f"{dns_server.host}:{dns_server.port}")
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.cleanup()


def rspamd_symbols(daemon: RspamdDaemon, message: bytes) -> dict[str, list[str]]:
    """Symbol name → options of rspamd's /checkv2 answer for ``message`` from CLIENT_IP."""
    request = urllib.request.Request(
        f"{daemon.url}/checkv2",
        data=message,
        headers={"IP": CLIENT_IP, "Helo": "mx.example.com", "From": "sender@example.com", "Rcpt": "rcpt@example.org"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: ignore *_proxy
    with opener.open(request, timeout=30) as response:
        answer = json.load(response)
    return {name: list(symbol.get("options") or []) for name, symbol in answer["symbols"].items()}


def rspamd_log_since(daemon: RspamdDaemon, offset: int, needle: str, timeout: float = 10.0) -> str:
    """rspamd's log from byte ``offset`` on, once it contains ``needle`` (bounded wait)."""
    path = daemon.dir / "log" / "rspamd.log"
    deadline = time.monotonic() + timeout
    while True:
        with path.open("rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode("utf-8", "replace")
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)  # polling a file the daemon writes; no event to wait on


@pytest.mark.parametrize("name", SIGNED_NAMES)
def test_rspamd_verifies_rsa_and_ed25519(signed_corpus: SignedCorpus, dkim_rspamd: RspamdDaemon, name: str) -> None:
    signed = _signed(signed_corpus, name)
    log_offset = (dkim_rspamd.dir / "log" / "rspamd.log").stat().st_size
    symbols = rspamd_symbols(dkim_rspamd, signed)
    if name in RSPAMD_BREAKS_ON_PURPOSE:
        header = RSPAMD_BREAKS_ON_PURPOSE[name]
        assert sorted(symbols["R_DKIM_REJECT"]) == sorted(f"{DOMAIN}:s={s}" for s in SELECTORS.values())
        assert header in [option.lower() for option in symbols["MULTIPLE_UNIQUE_HEADERS"]], symbols
        needle = f"header {header} is intended to be unique by email standards"
        assert needle in rspamd_log_since(dkim_rspamd, log_offset, needle)
        return
    allowed = symbols.get("R_DKIM_ALLOW", [])
    assert sorted(o for o in allowed if o.startswith(f"{DOMAIN}:")) == sorted(
        f"{DOMAIN}:s={s}" for s in SELECTORS.values()
    ), symbols
    rejected = [o for o in symbols.get("R_DKIM_REJECT", []) if o.startswith(f"{DOMAIN}:")]
    assert not rejected, symbols


def test_rspamd_rejects_a_tampered_body(signed_corpus: SignedCorpus, dkim_rspamd: RspamdDaemon) -> None:
    """The rspamd check is not vacuous: both signatures fail once the body changes."""
    message, signature = signed_corpus.messages[TAMPERED_FROM]
    tampered = insert_fields(message, signature) + b"P.S. added on the way\r\n"
    symbols = rspamd_symbols(dkim_rspamd, tampered)
    assert "R_DKIM_ALLOW" not in symbols, symbols
    assert sorted(symbols["R_DKIM_REJECT"]) == sorted(f"{DOMAIN}:s={s}" for s in SELECTORS.values())


# ---- (c) dkimpy, RSA and Ed25519 ----------------------------------------------------------


@pytest.mark.parametrize("name", SIGNED_NAMES)
def test_dkimpy_verifies_rsa_and_ed25519(signed_corpus: SignedCorpus, name: str) -> None:
    records = signed_corpus.records

    def dnsfunc(record_name: bytes, timeout: float = 5) -> bytes:
        return records[record_name.decode().rstrip(".")].encode()

    verifier = dkim.DKIM(_signed(signed_corpus, name))
    assert verifier.verify(idx=0, dnsfunc=dnsfunc)  # rsa-sha256
    require_nacl()
    assert verifier.verify(idx=1, dnsfunc=dnsfunc)  # ed25519-sha256


def test_dkimpy_rejects_a_tampered_body(signed_corpus: SignedCorpus) -> None:
    message, signature = signed_corpus.messages[TAMPERED_FROM]
    records = signed_corpus.records

    def dnsfunc(record_name: bytes, timeout: float = 5) -> bytes:
        return records[record_name.decode().rstrip(".")].encode()

    require_nacl()
    for index in (0, 1):
        with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
            dkim.DKIM(insert_fields(message, signature) + b"P.S.\r\n").verify(idx=index, dnsfunc=dnsfunc)


def test_bodies_the_relay_client_rewrites_still_verify(tmp_path: Path) -> None:
    """A lone CR in the body and a last line without a line end (with trailing white space) go out
    as CRLF lines (gateway.relay.client.data_chunks); the signature covers what is sent, so the
    receiver's dkimpy verifies both algorithms on the bytes the sink got."""
    require_nacl()
    messages = {
        "lone-cr": NEW_FROM + b"Subject: lone CR\r\n\r\nline one\rline two\r\nend\r\n",
        "no-final-line-end": NEW_FROM + b"Subject: no final line end\r\n\r\nfirst\r\nlast line \t",
    }
    relayed, records = _through_gateway(tmp_path / "state", messages)

    def dnsfunc(record_name: bytes, timeout: float = 5) -> bytes:
        return records[record_name.decode().rstrip(".")].encode()

    assert b"line one\r\nline two" in relayed["lone-cr"][0]  # what the client did send
    for name, (message, signatures) in relayed.items():
        assert signatures, name
        verifier = dkim.DKIM(insert_fields(message, signatures))
        assert verifier.verify(idx=0, dnsfunc=dnsfunc), name  # rsa-sha256
        assert verifier.verify(idx=1, dnsfunc=dnsfunc), name  # ed25519-sha256
