"""gateway.tls.local_ca: files, modes, renewal, and a real handshake with the result."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError
from gateway.tls.context import server_context
from gateway.tls.local_ca import LocalCertificates, certificate_not_after, ensure_local_certificates

HOSTNAME = "mx.example.test"
TIMEOUT = 10.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _handshake(certs: LocalCertificates, server_hostname: str) -> str:
    """Serve once with server_context(certs); connect with a client trusting ca.crt only.

    Returns:
        The negotiated protocol version.

    Raises:
        ssl.SSLError: the client did not accept the server certificate.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    ctx = server_context(certs.server_cert, certs.server_key, None)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.settimeout(TIMEOUT)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass  # the client reports what went wrong
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=certs.ca_cert)
    try:
        with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                assert tls.recv(2) == b"ok"
                version = tls.version()
                assert version is not None
                return version
    finally:
        thread.join(TIMEOUT)
        listener.close()


@pytest.fixture()
def tls_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tls"


@pytest.fixture()
def umask_zero() -> Iterator[None]:
    # The loosest umask possible: modes must come from the code, not the umask.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_creates_files_with_modes(tls_dir: Path, umask_zero: None) -> None:
    certs = ensure_local_certificates(tls_dir, HOSTNAME)

    assert certs == LocalCertificates(
        ca_cert=tls_dir / "ca.crt",
        server_cert=tls_dir / "server.crt",
        server_key=tls_dir / "server.key",
        renewed=True,
    )
    assert _mode(tls_dir) == 0o700
    assert _mode(tls_dir / "ca.key") == 0o600
    assert _mode(tls_dir / "server.key") == 0o600
    assert _mode(tls_dir / "ca.crt") == 0o644
    assert _mode(tls_dir / "server.crt") == 0o644
    # No temporary files left behind.
    assert sorted(p.name for p in tls_dir.iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    ensure_local_certificates(tmp_path, HOSTNAME)
    assert _mode(tmp_path) == 0o750


@pytest.mark.parametrize("server_hostname", ["localhost", HOSTNAME, "127.0.0.1", "::1"])
def test_client_trusting_ca_verifies_server(tls_dir: Path, server_hostname: str) -> None:
    certs = ensure_local_certificates(tls_dir, HOSTNAME)
    assert _handshake(certs, server_hostname) in ("TLSv1.2", "TLSv1.3")


def test_client_rejects_name_not_in_certificate(tls_dir: Path) -> None:
    certs = ensure_local_certificates(tls_dir, HOSTNAME)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, "other.example.test")


def test_ca_certificate_contents(tls_dir: Path) -> None:
    now = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    ensure_local_certificates(tls_dir, HOSTNAME, now=now)
    ca = _cert(tls_dir / "ca.crt")

    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (f"{HOSTNAME} gateway local CA")
    assert ca.issuer == ca.subject
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.not_valid_after_utc == now + timedelta(days=3650)
    assert ca.not_valid_before_utc <= now
    ca.verify_directly_issued_by(ca)


def test_server_certificate_contents(tls_dir: Path) -> None:
    now = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    ensure_local_certificates(tls_dir, HOSTNAME, now=now)
    server = _cert(tls_dir / "server.crt")

    server.verify_directly_issued_by(_cert(tls_dir / "ca.crt"))
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOSTNAME, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    basic = server.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    assert server.not_valid_after_utc == now + timedelta(days=365)
    assert certificate_not_after(tls_dir / "server.crt") == now + timedelta(days=365)
    key = serialization.load_pem_private_key((tls_dir / "server.key").read_bytes(), None)
    assert key.public_key() == server.public_key()


def test_second_call_keeps_certificate(tls_dir: Path) -> None:
    ensure_local_certificates(tls_dir, HOSTNAME)
    before = {p.name: p.read_bytes() for p in tls_dir.iterdir()}

    again = ensure_local_certificates(tls_dir, HOSTNAME)

    assert again.renewed is False
    assert {p.name: p.read_bytes() for p in tls_dir.iterdir()} == before


def test_renews_within_30_days_of_expiry(tls_dir: Path) -> None:
    real_now = datetime.now(UTC).replace(microsecond=0)
    ensure_local_certificates(tls_dir, HOSTNAME, now=real_now)
    ca_before = (tls_dir / "ca.crt").read_bytes()
    server_before = (tls_dir / "server.crt").read_bytes()
    key_before = (tls_dir / "server.key").read_bytes()

    # 35 days left: not yet.
    assert not ensure_local_certificates(tls_dir, HOSTNAME, now=real_now + timedelta(days=330)).renewed
    # 25 days left: renew, with the same CA.
    later = real_now + timedelta(days=340)
    certs = ensure_local_certificates(tls_dir, HOSTNAME, now=later)

    assert certs.renewed is True
    assert (tls_dir / "ca.crt").read_bytes() == ca_before
    assert (tls_dir / "server.crt").read_bytes() != server_before
    assert (tls_dir / "server.key").read_bytes() != key_before
    assert certificate_not_after(certs.server_cert) == later + timedelta(days=365)
    _cert(certs.server_cert).verify_directly_issued_by(_cert(certs.ca_cert))
    assert _mode(certs.server_key) == 0o600


def test_renews_when_signed_by_another_ca(tls_dir: Path) -> None:
    ensure_local_certificates(tls_dir, HOSTNAME)
    old_ca = (tls_dir / "ca.crt").read_bytes()
    (tls_dir / "ca.crt").unlink()
    (tls_dir / "ca.key").unlink()

    certs = ensure_local_certificates(tls_dir, HOSTNAME)

    assert certs.renewed is True
    assert (tls_dir / "ca.crt").read_bytes() != old_ca
    _cert(certs.server_cert).verify_directly_issued_by(_cert(certs.ca_cert))
    assert _handshake(certs, "localhost")


@pytest.mark.parametrize("missing", ["server.crt", "server.key"])
def test_renews_when_a_server_file_is_missing(tls_dir: Path, missing: str) -> None:
    ensure_local_certificates(tls_dir, HOSTNAME)
    (tls_dir / missing).unlink()
    assert ensure_local_certificates(tls_dir, HOSTNAME).renewed is True
    assert (tls_dir / missing).exists()


def test_renews_when_key_does_not_match(tls_dir: Path) -> None:
    # What a crash between writing server.key and server.crt would leave.
    ensure_local_certificates(tls_dir, HOSTNAME)
    stray = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tls_dir / "server.key").write_bytes(stray)

    certs = ensure_local_certificates(tls_dir, HOSTNAME)

    assert certs.renewed is True
    assert _handshake(certs, "localhost")


def test_renews_when_hostname_changes(tls_dir: Path) -> None:
    ensure_local_certificates(tls_dir, HOSTNAME)
    certs = ensure_local_certificates(tls_dir, "relay.example.test")
    assert certs.renewed is True
    assert _handshake(certs, "relay.example.test")


def test_ip_literal_hostname(tls_dir: Path) -> None:
    ensure_local_certificates(tls_dir, "192.0.2.25")
    san = _cert(tls_dir / "server.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("192.0.2.25") in san.get_values_for_type(x509.IPAddress)
    assert not ensure_local_certificates(tls_dir, "192.0.2.25").renewed


def test_damaged_ca_is_a_config_error_not_replaced(tls_dir: Path) -> None:
    ensure_local_certificates(tls_dir, HOSTNAME)
    (tls_dir / "ca.key").write_text("garbage\n")
    with pytest.raises(ConfigError) as info:
        ensure_local_certificates(tls_dir, HOSTNAME)
    assert info.value.key == "tls_dir"
    assert (tls_dir / "ca.key").read_text() == "garbage\n"


def test_ca_key_of_another_ca_is_a_config_error(tls_dir: Path, tmp_path: Path) -> None:
    ensure_local_certificates(tls_dir, HOSTNAME)
    other = ensure_local_certificates(tmp_path / "other", HOSTNAME)
    (tls_dir / "ca.key").write_bytes((other.ca_cert.parent / "ca.key").read_bytes())
    with pytest.raises(ConfigError):
        ensure_local_certificates(tls_dir, HOSTNAME)


def test_certificate_not_after_is_aware_utc(tls_dir: Path) -> None:
    certs = ensure_local_certificates(tls_dir, HOSTNAME)
    not_after = certificate_not_after(certs.ca_cert)
    assert not_after.tzinfo is not None and not_after.utcoffset() == timedelta(0)
    assert not_after == _cert(certs.ca_cert).not_valid_after_utc
    with pytest.raises(ValueError):
        certificate_not_after(certs.server_key)


def test_the_local_ca_is_name_constrained_to_our_names(tmp_path: Path) -> None:
    certs = ensure_local_certificates(tmp_path, "mx.example.net")
    ca = _cert(certs.ca_cert)
    extension = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    permitted = {str(name.value) for name in extension.value.permitted_subtrees}
    assert permitted == {"example.net", "localhost", "127.0.0.1/32", "::1/128"}
    assert _handshake(certs, "mx.example.net") in ("TLSv1.2", "TLSv1.3")
    assert _handshake(certs, "127.0.0.1") in ("TLSv1.2", "TLSv1.3")


def test_a_certificate_for_another_domain_from_the_local_ca_key_does_not_verify(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes

    certs = ensure_local_certificates(tmp_path, "mx.example.net")
    ca_cert = _cert(certs.ca_cert)
    ca_key = serialization.load_pem_private_key(certs.ca_cert.with_name("ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.test")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.test")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    (forged_dir / "server.crt").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    (forged_dir / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    stolen = LocalCertificates(
        ca_cert=certs.ca_cert,
        server_cert=forged_dir / "server.crt",
        server_key=forged_dir / "server.key",
        renewed=False,
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        _handshake(stolen, "bank.test")


def test_another_domain_for_an_existing_constrained_ca_is_a_config_error(tmp_path: Path) -> None:
    ensure_local_certificates(tmp_path, "mx.example.net")
    ensure_local_certificates(tmp_path, "mx2.example.net")  # same domain: the CA still fits
    with pytest.raises(ConfigError) as caught:
        ensure_local_certificates(tmp_path, "mx.other.example")
    assert caught.value.key == "myhostname" and "delete" in caught.value.allowed
