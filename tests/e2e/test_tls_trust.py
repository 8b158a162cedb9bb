"""Client-certificate trust over real handshakes: SIGHUP takes CAs away and adds them, failures are logged.

Issue 10: a reload used to add the new ``smtpd_tls_CAfile`` to the live SSL
context (a trust store only grows, so a removed CA went on verifying), and a
CA file added by reload was never asked for. Each test here sends SIGHUP to a
real gateway and shows what the next handshake does, on a STARTTLS and on an
implicit-TLS listener.
"""

from __future__ import annotations

import hashlib
import re
import signal
import smtplib
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import client_tls, relay_config
from tests.harness.ports import free_port

UNTRUSTED = "127.0.0.3"  # outside mynetworks: only a listed client certificate lets it relay
HANDSHAKE_REFUSED = (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)


class ClientCert:
    """A client certificate on disk with its fingerprints (lowercase hex)."""

    def __init__(self, ca: trustme.CA, name: str, folder: Path) -> None:
        issued = ca.issue_cert(f"{name}.client.test")
        self.cert, self.key = folder / f"{name}.crt", folder / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        issued.private_key_pem.write_to_path(str(self.key))
        der = x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(Encoding.DER)
        self.sha256, self.sha1 = hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two client CAs, a certificate from each, and one from a CA the gateway never trusts."""
    folder = tmp_path_factory.mktemp("pki")
    kept, removed, stranger = trustme.CA(), trustme.CA(), trustme.CA()
    for name, ca in (("kept", kept), ("removed", removed)):
        ca.cert_pem.write_to_path(str(folder / f"{name}-ca.pem"))
    return {
        "folder": folder,
        "kept": ClientCert(kept, "kept", folder),
        "removed": ClientCert(removed, "removed", folder),
        "stranger": ClientCert(stranger, "stranger", folder),
        "kept_ca": (folder / "kept-ca.pem").read_text(),
        "removed_ca": (folder / "removed-ca.pem").read_text(),
    }


def _config(sink_port: int, ports: dict[str, int], ca_file: Path | None, listed: list[ClientCert]) -> str:
    extra = ""
    if ca_file is not None:
        extra += f'smtpd_tls_CAfile = "{ca_file}"\n'
    if listed:
        extra += "relay_clientcerts = [" + ", ".join(f'"{c.sha256}"' for c in listed) + "]\n"
    return relay_config(sink_port, extra) + (
        f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{ports["starttls"]}"\ntls = "starttls"\n'
        f'[[listener]]\nname = "smtps"\naddress = "127.0.0.1:{ports["implicit"]}"\ntls = "implicit"\n'
    )


def _reload(gateway: GatewayProcess, config_text: str) -> None:
    done = len([line for line in gateway.lines if "reload done" in line])
    gateway.config_path.write_text(f'state_dir = "{gateway.state_dir}"\nmetrics_listen = "127.0.0.1:0"\n' + config_text)
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_for_log("reload done", count=done + 1)


def _connect(gateway: GatewayProcess, listener: str, cert: ClientCert | None) -> smtplib.SMTP:
    """An SMTP session from UNTRUSTED over TLS (STARTTLS or implicit) presenting ``cert``."""
    context = client_tls(gateway.ca_file, (cert.cert, cert.key) if cert else None)
    port = gateway.ports[listener]
    if listener == "implicit":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            "127.0.0.1", port, source_address=(UNTRUSTED, 0), timeout=10, context=context
        )
    else:
        client = smtplib.SMTP("127.0.0.1", port, source_address=(UNTRUSTED, 0), timeout=10)
        client.ehlo("client.test")
        client.starttls(context=context)
    client.ehlo("client.test")
    return client


def _relay_reply(gateway: GatewayProcess, listener: str, cert: ClientCert | None) -> int:
    """The RCPT reply code for a recipient outside relay_domains (250: the client may relay)."""
    with _connect(gateway, listener, cert) as client:
        client.mail("a@example.com")
        code, _ = client.rcpt("d@elsewhere.org")
        client.rset()
    return code


@pytest.fixture
def start(gateway_factory, sink):
    def run(ca_file: Path | None, listed: list[ClientCert]) -> GatewayProcess:
        ports = {"starttls": free_port(), "implicit": free_port()}
        gateway = gateway_factory(_config(sink.port, ports, ca_file, listed))
        gateway.ports = ports  # type: ignore[attr-defined]
        gateway.sink_port = sink.port  # type: ignore[attr-defined]
        return gateway.start()

    return run


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_a_ca_removed_by_sighup_no_longer_verifies_the_next_handshake(start, pki, tmp_path, listener):
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_text(pki["kept_ca"] + pki["removed_ca"])
    kept, removed = pki["kept"], pki["removed"]
    gateway = start(ca_file, [kept, removed])
    assert _relay_reply(gateway, listener, removed) == 250
    assert _relay_reply(gateway, listener, kept) == 250
    opened_before = None
    if listener == "starttls":  # a session that connected before the reload and starts TLS after it
        opened_before = smtplib.SMTP("127.0.0.1", gateway.ports["starttls"], source_address=(UNTRUSTED, 0), timeout=10)
        opened_before.ehlo("client.test")

    ca_file.write_text(pki["kept_ca"])
    _reload(gateway, _config(gateway.sink_port, gateway.ports, ca_file, [kept, removed]))

    with pytest.raises(HANDSHAKE_REFUSED):
        _relay_reply(gateway, listener, removed)
    name = "smtp" if listener == "starttls" else "smtps"
    gateway.wait_for_log(
        rf"TLS handshake failed from unknown\[127\.0\.0\.3\]:\d+ listener={name} "
        rf"cert_sha256={removed.sha256} cert_sha1={removed.sha1}: certificate verify failed"
    )
    if opened_before is not None:
        with pytest.raises(HANDSHAKE_REFUSED):
            opened_before.starttls(context=client_tls(gateway.ca_file, (removed.cert, removed.key)))
            opened_before.ehlo("client.test")
        opened_before.close()
    assert _relay_reply(gateway, listener, kept) == 250  # the CA that stayed still verifies


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_a_ca_and_fingerprint_added_by_sighup_let_the_next_client_relay(start, pki, tmp_path, listener):
    kept = pki["kept"]
    gateway = start(None, [])
    assert _relay_reply(gateway, listener, kept) == 554  # no certificate is asked for, so none counts
    assert not re.search(r"cert_sha256=", gateway.log_text)

    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_text(pki["kept_ca"])
    _reload(gateway, _config(gateway.sink_port, gateway.ports, ca_file, [kept]))

    assert _relay_reply(gateway, listener, kept) == 250
    assert _relay_reply(gateway, listener, None) == 554  # no certificate: still not trusted
    with _connect(gateway, listener, kept) as client:
        client.sendmail("a@example.com", ["d@elsewhere.org"], b"Subject: by certificate\r\n\r\nx\r\n")
    gateway.wait_for_log(
        rf"client=\S+\[127\.0\.0\.3\]:\d+, tls=TLSv1\.\d, from=<a@example\.com>, "
        rf"to=<d@elsewhere\.org>, size=\d+, relay=permitted rule=relay_clientcerts "
        rf"sha256={kept.sha256}, result=queued"
    )


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_failed_handshake_names_client_listener_and_certificate(start, pki, tmp_path, listener, tls_version):
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_text(pki["kept_ca"])
    gateway = start(ca_file, [pki["kept"]])
    stranger = pki["stranger"]
    context = client_tls(gateway.ca_file, (stranger.cert, stranger.key))
    context.maximum_version = tls_version
    with socket.create_connection(
        ("127.0.0.1", gateway.ports[listener]), timeout=10, source_address=(UNTRUSTED, 0)
    ) as raw:
        client_port = raw.getsockname()[1]
        if listener == "starttls":
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220 ")
            raw.sendall(b"STARTTLS\r\n")
            assert reader.readline().startswith(b"220 ")
        with pytest.raises(HANDSHAKE_REFUSED):
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"EHLO client.test\r\n")
                assert tls.recv(100) == b""  # TLS 1.3: the refusal comes after the client's handshake
                raise ConnectionError("closed without an alert")
    name = "smtp" if listener == "starttls" else "smtps"
    (line,) = gateway.wait_for_log(rf"TLS handshake failed from unknown\[127\.0\.0\.3\]:{client_port} ")
    assert f" listener={name} cert_sha256={stranger.sha256} cert_sha1={stranger.sha1}: " in line
    assert line.endswith("certificate verify failed: unable to get local issuer certificate")


def test_a_handshake_without_a_certificate_that_fails_says_so(start, pki, tmp_path):
    gateway = start(None, [])
    context = client_tls(gateway.ca_file)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-SHA")  # no AEAD: the gateway's suites refuse it
    with socket.create_connection(
        ("127.0.0.1", gateway.ports["implicit"]), timeout=10, source_address=(UNTRUSTED, 0)
    ) as raw:
        client_port = raw.getsockname()[1]
        with pytest.raises(HANDSHAKE_REFUSED):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    (line,) = gateway.wait_for_log(rf"TLS handshake failed from unknown\[127\.0\.0\.3\]:{client_port} ")
    assert " listener=smtps no client certificate: " in line
