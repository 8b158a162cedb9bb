"""Listeners and TLS: STARTTLS, implicit TLS, require_tls, client certificates (real handshakes)."""

from __future__ import annotations

import hashlib
import smtplib
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.harness.helpers import client_tls, relay_config
from tests.harness.ports import free_port

UNTRUSTED = "127.0.0.3"  # outside mynetworks: only a listed client certificate lets it relay


def _colon(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


@pytest.fixture(scope="module")
def client_ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def client_certs(client_ca, tmp_path_factory):
    """Three client certificates from one CA: listed by SHA-256, listed by SHA-1, unlisted."""
    folder = tmp_path_factory.mktemp("clientcerts")
    certs = {}
    for name in ("by-sha256", "by-sha1", "unlisted"):
        issued = client_ca.issue_cert(f"{name}.client.test")
        cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert_path))
        issued.private_key_pem.write_to_path(str(key_path))
        der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(Encoding.DER)
        certs[name] = (cert_path, key_path, hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest())
    ca_path = folder / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    return ca_path, certs


@pytest.fixture
def tls_gateway(gateway_factory, sink, client_certs):
    ca_path, certs = client_certs
    starttls_port, implicit_port, required_port = free_port(), free_port(), free_port()
    listed = [f"{_colon(certs['by-sha256'][2])} sha256.client.test", f"SHA1 Fingerprint={_colon(certs['by-sha1'][3])}"]
    config = relay_config(
        sink.port, f'smtpd_tls_CAfile = "{ca_path}"\nrelay_clientcerts = {listed!r}\n'.replace("'", '"')
    )
    config += (
        f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{starttls_port}"\ntls = "starttls"\n'
        f'[[listener]]\nname = "smtps"\naddress = "127.0.0.1:{implicit_port}"\ntls = "implicit"\n'
        f'[[listener]]\nname = "submission"\naddress = "127.0.0.1:{required_port}"\ntls = "starttls"\n'
        "require_tls = true\n"
    )
    gateway = gateway_factory(config)
    gateway.ports = {"starttls": starttls_port, "implicit": implicit_port, "required": required_port}
    with gateway:
        yield gateway


def test_starttls_listener_negotiates_tls_1_2_or_newer(tls_gateway, sink):
    with smtplib.SMTP("127.0.0.1", tls_gateway.ports["starttls"], timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert client.has_extn("enhancedstatuscodes") and client.has_extn("pipelining")
        assert client.esmtp_features["size"] == "10240000"
        client.starttls(context=client_tls(tls_gateway.ca_file))
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
        assert client.sendmail("a@example.com", ["b@elsewhere.org"], b"Subject: t\r\n\r\nx\r\n") == {}
    (message,) = sink.wait_for_messages(1)
    assert b"with ESMTPS id" in message.data and b"(using TLSv1." in message.data


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_below_1_2_is_refused(tls_gateway):
    context = client_tls(tls_gateway.ca_file)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1: the refusal must be the server's
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with smtplib.SMTP("127.0.0.1", tls_gateway.ports["starttls"], timeout=10) as client:
        client.ehlo("client.test")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            client.starttls(context=context)


def test_implicit_tls_listener(tls_gateway, sink):
    with smtplib.SMTP_SSL(
        "127.0.0.1", tls_gateway.ports["implicit"], timeout=10, context=client_tls(tls_gateway.ca_file)
    ) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 554
        assert client.sendmail("a@example.com", ["c@elsewhere.org"], b"Subject: 465\r\n\r\nx\r\n") == {}
    (message,) = sink.wait_for_messages(1)
    assert b"with ESMTPS id" in message.data


def test_require_tls_refuses_mail_before_starttls(tls_gateway):
    with smtplib.SMTP("127.0.0.1", tls_gateway.ports["required"], timeout=10) as client:
        client.ehlo("client.test")
        assert client.docmd("MAIL FROM:<a@example.com>") == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.starttls(context=client_tls(tls_gateway.ca_file))
        client.ehlo("client.test")
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 250


@pytest.mark.parametrize("name, relays", [("by-sha256", True), ("by-sha1", True), ("unlisted", False)])
def test_client_certificate_fingerprints(tls_gateway, client_certs, sink, name, relays):
    _, certs = client_certs
    cert, key, _, _ = certs[name]
    with smtplib.SMTP("127.0.0.1", tls_gateway.ports["starttls"], source_address=(UNTRUSTED, 0), timeout=10) as client:
        client.ehlo("client.test")
        client.starttls(context=client_tls(tls_gateway.ca_file, (cert, key)))
        client.ehlo("client.test")
        client.mail("a@example.com")
        code, text = client.rcpt("d@elsewhere.org")
        if code == 250:
            assert client.data(f"Subject: {name}\r\n\r\nx\r\n".encode())[0] == 250
    if relays:
        assert code == 250, text
        # the log names the fingerprint in the form the config listed it, so an operator can find the entry
        listed = f"sha256={certs[name][2]}" if name == "by-sha256" else f"sha1={certs[name][3]}"
        tls_gateway.wait_for_log(
            rf"to=<d@elsewhere\.org>, size=\d+, relay=permitted rule=relay_clientcerts "
            rf"{listed}, result=queued"
        )
    else:
        assert (code, text[:5]) == (554, b"5.7.1")
    tls_gateway.wait_for_log(r"STARTTLS from \S*\[127\.0\.0\.3\].* cert_sha256=" + certs[name][2])


def test_without_a_certificate_the_same_client_is_refused(tls_gateway):
    with smtplib.SMTP("127.0.0.1", tls_gateway.ports["starttls"], source_address=(UNTRUSTED, 0), timeout=10) as client:
        client.ehlo("client.test")
        client.starttls(context=client_tls(tls_gateway.ca_file))
        client.ehlo("client.test")
        client.mail("a@example.com")
        assert client.rcpt("d@elsewhere.org")[0] == 554
