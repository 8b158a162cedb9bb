"""``gateway dkim genkey|show`` and ``gateway dns-check``, run as the real CLI against a loopback DNS server.

The zone is what an operator would publish: the record printed by ``dkim genkey``
pasted in, plus MX, A and PTR of the gateway host, SPF and DMARC. Each test then
breaks one record and checks that dns-check names it and prints the record to publish.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.dkim import keys as dkim_keys
from tests.harness.dns_server import TestDnsServer

HOST = "mx.example.com"
DMARC_FIX = '_dmarc.example.com. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.com"'


class Gateway:
    """The CLI with one config file: ``run("dns-check", ...)``."""

    def __init__(self, tmp_path: Path, dns_port: int) -> None:
        self.state_dir = tmp_path / "state"
        self.config_path = tmp_path / "gateway.toml"
        self.config_path.write_text(
            f'myhostname = "{HOST}"\nstate_dir = "{self.state_dir}"\n'
            f'dns_nameservers = ["127.0.0.1:{dns_port}"]\nrelay_domains = ["example.net"]\n'
            '[dkim]\ndomains = ["example.com"]\n'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def genkey(self, *args: str) -> str:
        """Run ``dkim genkey`` and return the record line it printed."""
        result = self.run("dkim", "genkey", *args)
        assert result.returncode == 0, result.stderr
        return record_line(result.stdout)


def record_line(output: str) -> str:
    lines = [line for line in output.splitlines() if " IN TXT " in line]
    assert len(lines) == 1, output
    return lines[0]


def paste(dns_server: TestDnsServer, record: str) -> tuple[str, str]:
    """Publish a zone-file TXT line as printed by genkey; returns (owner, value)."""
    match = re.fullmatch(r'(\S+)\.  IN TXT \( ((?:"[^"]*" ?)+)\)', record)
    assert match, record
    strings = re.findall(r'"([^"]*)"', match.group(2))
    assert all(len(part) <= 255 for part in strings)
    value = "".join(strings)
    dns_server.add(match.group(1), "TXT", [value])
    return match.group(1), value


def lines_of(output: str) -> dict[str, str]:
    """``{"<domain>  <check>": "PASS"|"FAIL"}`` from dns-check output."""
    result = {}
    for line in output.splitlines():
        match = re.match(r"(PASS|FAIL)  (\S+)  ([^:]+): ", line)
        if match:
            result[f"{match.group(2)}  {match.group(3)}"] = match.group(1)
    return result


@pytest.fixture
def dns_server() -> Iterator[TestDnsServer]:
    records = {
        ("example.com", "MX"): ["10 mx.example.com."],
        (HOST, "A"): ["127.0.0.1"],
        ("127.0.0.1", "PTR"): [f"{HOST}."],
        ("example.com", "TXT"): ["v=spf1 ip4:127.0.0.0/8 -all", "google-site-verification=abc"],
        ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"],
    }
    with TestDnsServer(records) as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path, dns_server: TestDnsServer) -> Gateway:
    return Gateway(tmp_path, dns_server.port)


@pytest.fixture
def published(gateway: Gateway, dns_server: TestDnsServer) -> str:
    """An RSA key made with genkey and its record pasted into the zone; returns the record line."""
    record = gateway.genkey("example.com")
    paste(dns_server, record)
    return record


ALL_CHECKS = {
    f"{HOST}  A/AAAA": "PASS",
    f"{HOST}  PTR 127.0.0.1": "PASS",
    "example.com  MX": "PASS",
    "example.com  SPF": "PASS",
    "example.com  DKIM mail (rsa)": "PASS",
    "example.com  DMARC": "PASS",
}


def test_published_records_pass_every_check(gateway, published):
    assert published.startswith('mail._domainkey.example.com.  IN TXT ( "v=DKIM1; k=rsa; p=')
    key = gateway.state_dir / "dkim" / "example.com" / "mail.rsa.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines_of(result.stdout) == ALL_CHECKS, result.stdout
    assert "records to publish" not in result.stdout
    assert "MX: 10 mx.example.com" in result.stdout
    # without arguments: the [dkim] domains list (not relay_domains)
    default = gateway.run("dns-check")
    assert default.returncode == 0 and lines_of(default.stdout) == ALL_CHECKS, default.stdout


def test_dkim_show_prints_the_genkey_record(gateway, published):
    shown = gateway.run("dkim", "show")
    assert shown.returncode == 0, shown.stderr
    assert record_line(shown.stdout) == published
    named = gateway.run("dkim", "show", "example.com")
    assert named.returncode == 0 and record_line(named.stdout) == published
    missing = gateway.run("dkim", "show", "example.com", "example.org")
    assert missing.returncode == 1 and "example.org" in missing.stderr
    assert record_line(missing.stdout) == published


def test_genkey_refuses_to_replace_a_key_without_force(gateway, published):
    again = gateway.run("dkim", "genkey", "example.com")
    assert again.returncode == 1 and "--force" in again.stderr and again.stdout == ""
    replaced = gateway.genkey("example.com", "--force")
    assert replaced != published
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1
    assert lines_of(result.stdout)["example.com  DKIM mail (rsa)"] == "FAIL"


def test_missing_dmarc_fails_and_prints_the_record(gateway, dns_server, published):
    dns_server.remove("_dmarc.example.com", "TXT")
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1
    assert lines_of(result.stdout) == {**ALL_CHECKS, "example.com  DMARC": "FAIL"}, result.stdout
    assert "FAIL  example.com  DMARC: no v=DMARC1 record at _dmarc.example.com" in result.stdout
    assert result.stdout.splitlines()[-1] == DMARC_FIX


def test_dmarc_txt_that_is_not_dmarc_fails(gateway, dns_server, published):
    dns_server.add("_dmarc.example.com", "TXT", ["p=reject"])
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1 and DMARC_FIX in result.stdout
    assert lines_of(result.stdout)["example.com  DMARC"] == "FAIL"


@pytest.mark.parametrize(
    "spf, fix",
    [
        ("v=spf1 -all", 'example.com. IN TXT "v=spf1 ip4:127.0.0.1 -all"'),
        ("v=spf1 ip4:192.0.2.0/24 ~all", 'example.com. IN TXT "v=spf1 ip4:192.0.2.0/24 ip4:127.0.0.1 ~all"'),
        (
            "v=spf1 include:_spf.example.net -all",
            'example.com. IN TXT "v=spf1 include:_spf.example.net ip4:127.0.0.1 -all"',
        ),
        (None, 'example.com. IN TXT "v=spf1 ip4:127.0.0.1 -all"'),
    ],
)
def test_spf_that_does_not_authorize_the_gateway_fails(gateway, dns_server, published, spf, fix):
    dns_server.add("_spf.example.net", "TXT", ["v=spf1 ip4:198.51.100.0/24 -all"])
    dns_server.add("example.com", "TXT", [spf] if spf else ["unrelated text"])
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1
    assert lines_of(result.stdout) == {**ALL_CHECKS, "example.com  SPF": "FAIL"}, result.stdout
    assert result.stdout.splitlines()[-1] == fix


def test_spf_through_include_passes(gateway, dns_server, published):
    dns_server.add("example.com", "TXT", ["v=spf1 include:_spf.example.net -all"])
    dns_server.add("_spf.example.net", "TXT", ["v=spf1 a:mx.example.com -all"])
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 0, result.stdout
    assert ("_spf.example.net", "TXT", "udp") in dns_server.queries  # pyspf asked our server


def test_dkim_record_of_another_key_fails(gateway, dns_server, published):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns_server.add("mail._domainkey.example.com", "TXT", [dkim_keys.dns_txt_value(other)])
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1
    assert lines_of(result.stdout) == {**ALL_CHECKS, "example.com  DKIM mail (rsa)": "FAIL"}, result.stdout
    assert "is not the one in" in result.stdout
    assert result.stdout.splitlines()[-1] == published  # the record to publish is genkey's


def test_dkim_record_with_folded_p_value_passes(gateway, dns_server, published):
    owner, value = paste(dns_server, published)
    head, _, key = value.partition("p=")
    dns_server.add(owner, "TXT", [f"{head}  p= " + " ".join(key[i : i + 60] for i in range(0, len(key), 60))])
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 0, result.stdout


def test_missing_dkim_record_fails(gateway, dns_server, published):
    dns_server.remove("mail._domainkey.example.com", "TXT")
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1
    assert "FAIL  example.com  DKIM mail (rsa): no DKIM key record at mail._domainkey.example.com" in result.stdout
    assert result.stdout.splitlines()[-1] == published


def test_domain_without_key_fails_dkim(gateway, dns_server, published):
    for name, rdtype, value in [
        ("example.org", "MX", "10 mx.example.com."),
        ("example.org", "TXT", "v=spf1 a:mx.example.com -all"),
        ("_dmarc.example.org", "TXT", "v=DMARC1; p=none"),
    ]:
        dns_server.add(name, rdtype, [value])
    result = gateway.run("dns-check", "example.com", "example.org")
    assert result.returncode == 1
    assert lines_of(result.stdout) == {
        **ALL_CHECKS,
        "example.org  MX": "PASS",
        "example.org  SPF": "PASS",
        "example.org  DKIM": "FAIL",
        "example.org  DMARC": "PASS",
    }, result.stdout
    assert "gateway dkim genkey example.org" in result.stdout


def test_ed25519_key(gateway, dns_server, published):
    clash = gateway.run("dkim", "genkey", "example.com", "--algorithm", "ed25519")
    assert clash.returncode == 1 and "--selector" in clash.stderr  # one key record per selector name
    record = gateway.genkey("example.com", "--selector", "ed", "--algorithm", "ed25519")
    assert re.fullmatch(
        r'ed\._domainkey\.example\.com\.  IN TXT \( "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=" \)', record
    ), record
    owner, value = paste(dns_server, record)
    assert len(base64.b64decode(value.partition("p=")[2])) == 32
    shown = gateway.run("dkim", "show", "example.com")
    assert shown.returncode == 0 and record in shown.stdout.splitlines() and published in shown.stdout.splitlines()
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 0, result.stdout
    assert lines_of(result.stdout) == {**ALL_CHECKS, "example.com  DKIM ed (ed25519)": "PASS"}
    dns_server.add(owner, "TXT", [value.replace("k=ed25519", "k=rsa")])
    wrong_type = gateway.run("dns-check", "example.com")
    assert wrong_type.returncode == 1 and "FAIL  example.com  DKIM ed (ed25519): k=rsa" in wrong_type.stdout


def test_missing_or_wrong_ptr_fails(gateway, dns_server, published):
    dns_server.add("127.0.0.1", "PTR", ["localhost."])
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1
    assert lines_of(result.stdout) == {**ALL_CHECKS, f"{HOST}  PTR 127.0.0.1": "FAIL"}, result.stdout
    assert "PTR points to localhost, not mx.example.com" in result.stdout
    assert f"1.0.0.127.in-addr.arpa. IN PTR {HOST}." in result.stdout
    dns_server.remove("127.0.0.1", "PTR")
    assert "no PTR record at 1.0.0.127.in-addr.arpa" in gateway.run("dns-check", "example.com").stdout


def test_missing_mx_and_host_address_fail(gateway, dns_server, published):
    dns_server.remove("example.com", "MX")
    dns_server.remove(HOST, "A")
    result = gateway.run("dns-check", "example.com")
    assert result.returncode == 1
    checks = lines_of(result.stdout)
    assert checks[f"{HOST}  A/AAAA"] == "FAIL" and checks["example.com  MX"] == "FAIL"
    assert checks["example.com  SPF"] == "FAIL"  # nothing to authorize
    assert f"example.com. IN MX 10 {HOST}." in result.stdout


def test_dns_errors_are_failures_not_crashes(gateway, dns_server, published):
    dns_server.set_rcode("_dmarc.example.com", "TXT", "SERVFAIL")
    dns_server.set_rcode("example.com", "MX", "TIMEOUT")
    result = gateway.run("dns-check", "--timeout", "1", "example.com")
    assert result.returncode == 1 and result.stderr == ""
    checks = lines_of(result.stdout)
    assert checks == {**ALL_CHECKS, "example.com  MX": "FAIL", "example.com  DMARC": "FAIL"}, result.stdout
    assert re.search(r"FAIL  example.com  DMARC: TXT _dmarc.example.com: .*SERVFAIL", result.stdout)
    assert "FAIL  example.com  MX: MX example.com: DNS timeout after 1s" in result.stdout


def test_dns_check_without_domains_is_a_usage_error(tmp_path, dns_server):
    config = tmp_path / "gateway.toml"
    config.write_text(f'state_dir = "{tmp_path}"\ndns_nameservers = ["127.0.0.1:{dns_server.port}"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "dns-check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and "no domains" in result.stderr
