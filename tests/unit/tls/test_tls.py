"""gateway.tls.context: real TLS handshakes over 127.0.0.1 against the contexts it builds."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError
from gateway.tls.context import (
    client_context,
    normalize_fingerprint,
    peer_certificate_fingerprints,
    server_context,
    tls_session_info,
)
from gateway.tls.local_ca import ensure_local_certificates

TIMEOUT = 10.0


# --------------------------------------------------------------------------- helpers


@dataclass
class ServerResult:
    """What the server thread saw after (trying) the handshake."""

    fingerprints: tuple[str, str] | None = None
    session: tuple[str | None, str | None] = (None, None)
    peercert: object = None
    error: BaseException | None = None


@dataclass
class ClientResult:
    """What the client saw: handshake + first read, or the error of either."""

    version: str | None = None
    fingerprints: tuple[str, str] | None = None
    received: bytes = b""
    error: BaseException | None = None
    handshake_completed: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def run_handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str | None = "localhost",
) -> tuple[ServerResult, ClientResult]:
    """One TLS connection on 127.0.0.1: the server answers b"ok" after its handshake.

    The client reads once after its handshake because with TLS 1.3 a rejected
    client certificate is only reported on the client's first read.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]
    server = ServerResult()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            server.error = exc
            return
        conn.settimeout(TIMEOUT)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                server.peercert = tls.getpeercert()
                server.fingerprints = peer_certificate_fingerprints(tls)
                server.session = tls_session_info(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            server.error = exc
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ClientResult()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                client.handshake_completed = True
                client.version = tls.version()
                client.fingerprints = peer_certificate_fingerprints(tls)
                client.extra["peercert"] = tls.getpeercert()
                client.received = tls.recv(16)
    except (ssl.SSLError, OSError) as exc:
        client.error = exc
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive(), "server thread did not finish"
    return server, client


def write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    return cert, key


def der_of(leaf_cert_pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(leaf_cert_pem).public_bytes(serialization.Encoding.DER)


def self_signed_client_cert(common_name: str) -> tuple[bytes, bytes]:
    """A self-signed end-entity certificate (CA:FALSE, clientAuth), PEM cert and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture()
def server_files(server_ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    return write_leaf(server_ca.issue_cert("localhost", "127.0.0.1"), tmp_path, "server")


@pytest.fixture()
def client_ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(path)
    return ca, path


def trusting_client(server_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    server_ca.configure_trust(ctx)
    return ctx


# --------------------------------------------------------------------------- server_context


def test_server_context_settings(server_files: tuple[Path, Path], client_ca: tuple[trustme.CA, Path]) -> None:
    without = server_context(*server_files, None)
    assert without.minimum_version == ssl.TLSVersion.TLSv1_2
    assert without.verify_mode == ssl.CERT_NONE
    assert without.check_hostname is False

    with_ca = server_context(*server_files, client_ca[1])
    assert with_ca.verify_mode == ssl.CERT_OPTIONAL
    assert with_ca.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert with_ca.check_hostname is False


def test_tls12_and_tls13_clients_are_accepted(server_ca: trustme.CA, server_files: tuple[Path, Path]) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client_ctx = trusting_client(server_ca)
        client_ctx.minimum_version = client_ctx.maximum_version = version
        server, client = run_handshake(server_context(*server_files, None), client_ctx)
        assert client.error is None and server.error is None
        assert client.received == b"ok"
        version_name, cipher = server.session
        assert version_name == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        assert cipher


def _tls11_client(server_ca: trustme.CA) -> ssl.SSLContext:
    ctx = trusting_client(server_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 handshake MAC) above security level 0.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_server_rejects_tls11_client(server_ca: trustme.CA, server_files: tuple[Path, Path]) -> None:
    # Control: the same client does complete TLS 1.1 with a permissive server,
    # so the failure below comes from server_context, not from this OpenSSL.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(*server_files)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    _, control = run_handshake(permissive, _tls11_client(server_ca))
    if control.error is not None:
        pytest.fail(f"this OpenSSL cannot do TLS 1.1 at all: {control.error}")
    assert control.version == "TLSv1.1"

    server, client = run_handshake(server_context(*server_files, None), _tls11_client(server_ca))
    assert not client.handshake_completed
    assert isinstance(client.error, ssl.SSLError)
    assert isinstance(server.error, ssl.SSLError)
    assert server.error.reason == "UNSUPPORTED_PROTOCOL"
    assert client.error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


# --------------------------------------------------------------------------- client certificates


def test_client_cert_signed_by_configured_ca_yields_fingerprints(
    server_ca: trustme.CA,
    server_files: tuple[Path, Path],
    client_ca: tuple[trustme.CA, Path],
) -> None:
    ca, ca_file = client_ca
    leaf = ca.issue_cert("client.example")
    client_ctx = trusting_client(server_ca)
    leaf.configure_cert(client_ctx)

    server, client = run_handshake(server_context(*server_files, ca_file), client_ctx)

    assert server.error is None and client.error is None
    der = der_of(leaf.cert_chain_pems[0].bytes())
    assert server.fingerprints == (hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest())
    assert isinstance(server.peercert, dict) and server.peercert


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_self_signed_client_cert_in_bundle_is_its_own_trust_anchor(
    server_ca: trustme.CA,
    server_files: tuple[Path, Path],
    tmp_path: Path,
    tls_version: ssl.TLSVersion,
) -> None:
    cert_pem, key_pem = self_signed_client_cert("laptop.example")
    bundle = tmp_path / "clients.pem"
    # The bundle also holds an unrelated CA, as a real smtpd_tls_CAfile would.
    bundle.write_bytes(trustme.CA().cert_pem.bytes() + cert_pem)
    (tmp_path / "laptop.crt").write_bytes(cert_pem)
    (tmp_path / "laptop.key").write_bytes(key_pem)
    client_ctx = trusting_client(server_ca)
    client_ctx.maximum_version = tls_version
    client_ctx.load_cert_chain(tmp_path / "laptop.crt", tmp_path / "laptop.key")

    server, client = run_handshake(server_context(*server_files, bundle), client_ctx)

    assert server.error is None and client.error is None
    der = der_of(cert_pem)
    assert server.fingerprints == (hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest())


def test_leaf_in_bundle_without_its_ca_is_trusted_by_partial_chain(
    server_ca: trustme.CA, server_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # Without VERIFY_X509_PARTIAL_CHAIN OpenSSL would insist on reaching the
    # (absent) self-signed root of this leaf.
    leaf = trustme.CA().issue_cert("pinned.example")
    bundle = tmp_path / "pinned.pem"
    leaf.cert_chain_pems[0].write_to_path(bundle)
    client_ctx = trusting_client(server_ca)
    leaf.configure_cert(client_ctx)

    server, client = run_handshake(server_context(*server_files, bundle), client_ctx)

    assert server.error is None and client.error is None
    der = der_of(leaf.cert_chain_pems[0].bytes())
    assert server.fingerprints == (hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest())


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_cert_from_unrelated_ca_fails_the_handshake(
    server_ca: trustme.CA,
    server_files: tuple[Path, Path],
    client_ca: tuple[trustme.CA, Path],
    tls_version: ssl.TLSVersion,
) -> None:
    """CERT_OPTIONAL does not mean "unverified is fine": OpenSSL aborts the handshake.

    The server's handshake raises SSLCertVerificationError, so no fingerprints
    are ever computed. The client gets an "unknown ca" alert: during its
    handshake with TLS 1.2, on its first read with TLS 1.3 (its handshake ends
    before the server has checked the client certificate).
    """
    _, ca_file = client_ca
    stranger = trustme.CA().issue_cert("stranger.example")
    client_ctx = trusting_client(server_ca)
    client_ctx.maximum_version = tls_version
    stranger.configure_cert(client_ctx)

    server, client = run_handshake(server_context(*server_files, ca_file), client_ctx)

    assert isinstance(server.error, ssl.SSLCertVerificationError)
    assert server.fingerprints is None
    assert isinstance(client.error, ssl.SSLError)
    assert "unknown ca" in str(client.error).lower()
    assert client.received == b""
    assert client.handshake_completed is (tls_version == ssl.TLSVersion.TLSv1_3)


def test_expired_client_cert_from_configured_ca_fails_the_handshake(
    server_ca: trustme.CA,
    server_files: tuple[Path, Path],
    client_ca: tuple[trustme.CA, Path],
) -> None:
    ca, ca_file = client_ca
    expired = ca.issue_cert(
        "old.example",
        not_before=datetime(2000, 1, 1, tzinfo=UTC),
        not_after=datetime(2001, 1, 1, tzinfo=UTC),
    )
    client_ctx = trusting_client(server_ca)
    expired.configure_cert(client_ctx)

    server, client = run_handshake(server_context(*server_files, ca_file), client_ctx)

    assert isinstance(server.error, ssl.SSLCertVerificationError)
    assert "expired" in str(server.error)
    assert server.fingerprints is None
    assert client.error is not None and client.received == b""


def test_client_cert_without_client_auth_purpose_fails_the_handshake(
    server_ca: trustme.CA, server_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # The local CA's server certificate has extendedKeyUsage serverAuth only;
    # OpenSSL checks the "SSL client" purpose, so it cannot double as a client
    # certificate even though it chains to the configured CA.
    local = ensure_local_certificates(tmp_path / "tls", "mx.example.test")
    client_ctx = trusting_client(server_ca)
    client_ctx.load_cert_chain(local.server_cert, local.server_key)

    server, client = run_handshake(server_context(*server_files, local.ca_cert), client_ctx)

    assert isinstance(server.error, ssl.SSLCertVerificationError)
    assert "unsuitable certificate purpose" in str(server.error)
    assert server.fingerprints is None
    assert client.error is not None and client.received == b""


def test_no_client_cert_yields_none(
    server_ca: trustme.CA,
    server_files: tuple[Path, Path],
    client_ca: tuple[trustme.CA, Path],
) -> None:
    server, client = run_handshake(server_context(*server_files, client_ca[1]), trusting_client(server_ca))

    assert server.error is None and client.error is None
    # Under CERT_OPTIONAL with nothing sent, getpeercert() is None, not {}.
    assert server.peercert is None
    assert server.fingerprints is None


def test_client_cert_is_not_requested_without_client_ca(
    server_ca: trustme.CA,
    server_files: tuple[Path, Path],
    client_ca: tuple[trustme.CA, Path],
) -> None:
    client_ctx = trusting_client(server_ca)
    client_ca[0].issue_cert("client.example").configure_cert(client_ctx)

    server, client = run_handshake(server_context(*server_files, None), client_ctx)

    assert server.error is None and client.error is None
    assert server.peercert is None
    assert server.fingerprints is None


def test_unverified_peer_cert_gives_empty_dict_and_no_fingerprints(
    server_files: tuple[Path, Path],
) -> None:
    # The one way to see getpeercert() == {}: a CERT_NONE context (here the
    # "may" relay client) receives a certificate it did not verify.
    ctx = client_context("may", None, None, None)
    assert ctx is not None
    server, client = run_handshake(server_context(*server_files, None), ctx)

    assert client.error is None
    assert client.extra["peercert"] == {}
    assert client.fingerprints is None


def test_fingerprints_and_session_info_without_handshake(server_ca: trustme.CA) -> None:
    assert peer_certificate_fingerprints(None) is None
    assert tls_session_info(None) == (None, None)
    pending = trusting_client(server_ca).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
    assert peer_certificate_fingerprints(pending) is None
    assert tls_session_info(pending) == (None, None)


# --------------------------------------------------------------------------- server_context errors


def test_server_context_config_errors(
    server_files: tuple[Path, Path], client_ca: tuple[trustme.CA, Path], tmp_path: Path
) -> None:
    cert, key = server_files
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(other_key)

    cases = [
        ((tmp_path / "missing.crt", key, None), "smtpd_tls_cert_file"),
        ((garbage, key, None), "smtpd_tls_cert_file"),
        ((cert, tmp_path / "missing.key", None), "smtpd_tls_key_file"),
        ((cert, garbage, None), "smtpd_tls_key_file"),
        ((cert, other_key, None), "smtpd_tls_key_file"),
        ((cert, key, tmp_path / "missing-ca.pem"), "smtpd_tls_CAfile"),
        ((cert, key, garbage), "smtpd_tls_CAfile"),
        ((cert, key, tmp_path), "smtpd_tls_CAfile"),
    ]
    for args, config_key in cases:
        with pytest.raises(ConfigError) as info:
            server_context(*args)
        assert info.value.key == config_key, args


def test_encrypted_server_key_is_a_config_error_not_a_prompt(server_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = server_files
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError) as info:
        server_context(cert, encrypted, None)
    assert info.value.key == "smtpd_tls_key_file"
    assert "unencrypted" in info.value.allowed


def test_weak_server_certificate_blames_the_cert_file(tmp_path: Path) -> None:
    # OpenSSL 3's default security level refuses RSA keys under 2048 bits in
    # load_cert_chain; that is the certificate's fault, not the key file's.
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.example")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "weak.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "weak.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError) as info:
        server_context(tmp_path / "weak.crt", tmp_path / "weak.key", None)
    assert info.value.key == "smtpd_tls_cert_file"


def test_key_may_live_in_the_cert_file(server_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = server_files
    combined = tmp_path / "combined.pem"
    combined.write_bytes(key.read_bytes() + cert.read_bytes())
    assert server_context(combined, combined, None).verify_mode == ssl.CERT_NONE


# --------------------------------------------------------------------------- client_context


def test_client_context_levels() -> None:
    assert client_context("none", None, None, None) is None
    for level in ("may", "encrypt"):
        ctx = client_context(level, None, None, None)
        assert ctx is not None
        assert ctx.verify_mode == ssl.CERT_NONE
        assert ctx.check_hostname is False
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    verify = client_context("verify", None, None, None)
    assert verify is not None
    assert verify.verify_mode == ssl.CERT_REQUIRED
    assert verify.check_hostname is True
    assert verify.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_context_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        client_context("dane", None, None, None)
    assert info.value.key == "smtp_tls_security_level"
    with pytest.raises(ConfigError) as info:
        client_context("verify", tmp_path / "missing.pem", None, None)
    assert info.value.key == "smtp_tls_CAfile"
    with pytest.raises(ConfigError) as info:
        client_context("may", None, tmp_path / "missing.crt", None)
    assert info.value.key == "smtp_tls_cert_file"
    with pytest.raises(ConfigError) as info:
        client_context("may", None, None, tmp_path / "client.key")
    assert info.value.key == "smtp_tls_key_file"


def test_verify_level_checks_chain_and_hostname(
    server_ca: trustme.CA, server_files: tuple[Path, Path], tmp_path: Path
) -> None:
    ca_file = tmp_path / "server-ca.pem"
    server_ca.cert_pem.write_to_path(ca_file)

    ctx = client_context("verify", ca_file, None, None)
    assert ctx is not None
    _, client = run_handshake(server_context(*server_files, None), ctx)
    assert client.error is None and client.received == b"ok"

    _, wrong_name = run_handshake(server_context(*server_files, None), ctx, "mx.other.example")
    assert isinstance(wrong_name.error, ssl.SSLCertVerificationError)

    stranger_ca = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(stranger_ca)
    untrusting = client_context("verify", stranger_ca, None, None)
    assert untrusting is not None
    _, untrusted = run_handshake(server_context(*server_files, None), untrusting)
    assert isinstance(untrusted.error, ssl.SSLCertVerificationError)


def test_encrypt_level_accepts_any_server_cert(server_files: tuple[Path, Path]) -> None:
    ctx = client_context("encrypt", None, None, None)
    assert ctx is not None
    _, client = run_handshake(server_context(*server_files, None), ctx, "mx.other.example")
    assert client.error is None and client.received == b"ok"


def test_client_context_presents_client_certificate(
    server_files: tuple[Path, Path], client_ca: tuple[trustme.CA, Path], tmp_path: Path
) -> None:
    ca, ca_file = client_ca
    leaf = ca.issue_cert("relay.example")
    cert, key = write_leaf(leaf, tmp_path, "relay")
    ctx = client_context("encrypt", None, cert, key)
    assert ctx is not None

    server, client = run_handshake(server_context(*server_files, ca_file), ctx)

    assert server.error is None and client.error is None
    der = der_of(cert.read_bytes())
    assert server.fingerprints == (hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest())


# --------------------------------------------------------------------------- normalize_fingerprint

SHA256_HEX = hashlib.sha256(b"x").hexdigest()
SHA1_HEX = hashlib.sha1(b"x").hexdigest()


def _colons(hex_digits: str) -> str:
    return ":".join(hex_digits[i : i + 2] for i in range(0, len(hex_digits), 2)).upper()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SHA256_HEX, SHA256_HEX),
        (SHA256_HEX.upper(), SHA256_HEX),
        (SHA1_HEX, SHA1_HEX),
        (_colons(SHA256_HEX), SHA256_HEX),
        (_colons(SHA1_HEX), SHA1_HEX),
        (f"{_colons(SHA256_HEX)} trusted.mailserver.example.tld", SHA256_HEX),
        (f"  {SHA1_HEX}\tlaptop of alice  ", SHA1_HEX),
        (f"SHA256 Fingerprint={_colons(SHA256_HEX)}", SHA256_HEX),
        (f"sha256 Fingerprint={_colons(SHA256_HEX)}", SHA256_HEX),
        (f"SHA1 Fingerprint={_colons(SHA1_HEX)}", SHA1_HEX),
        (f"sha1 Fingerprint={_colons(SHA1_HEX)} old client", SHA1_HEX),
        (f"Fingerprint={SHA1_HEX}", SHA1_HEX),
    ],
)
def test_normalize_fingerprint(text: str, expected: str) -> None:
    assert normalize_fingerprint(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "trusted.mailserver.example.tld",
        SHA256_HEX[:-2],
        SHA256_HEX + "00",
        SHA1_HEX[:-1],
        SHA256_HEX[:-1] + "g",
        _colons(SHA1_HEX)[:-1],
        "A:AB" + _colons(SHA1_HEX)[4:],
        f"SHA256 Fingerprint={_colons(SHA1_HEX)}",
        f"sha1 Fingerprint={SHA256_HEX}",
        f"# {SHA256_HEX}",
    ],
)
def test_normalize_fingerprint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_fingerprint(text)


def test_normalize_fingerprint_matches_peer_fingerprints(
    server_ca: trustme.CA,
    server_files: tuple[Path, Path],
    client_ca: tuple[trustme.CA, Path],
) -> None:
    ca, ca_file = client_ca
    leaf = ca.issue_cert("client.example")
    client_ctx = trusting_client(server_ca)
    leaf.configure_cert(client_ctx)
    server, _ = run_handshake(server_context(*server_files, ca_file), client_ctx)
    assert server.fingerprints is not None
    sha256_hex, sha1_hex = server.fingerprints

    der = der_of(leaf.cert_chain_pems[0].bytes())
    openssl_sha256 = "sha256 Fingerprint=" + _colons(hashlib.sha256(der).hexdigest())
    postfix_sha1 = _colons(hashlib.sha1(der).hexdigest()) + " client.example"
    assert normalize_fingerprint(openssl_sha256) == sha256_hex
    assert normalize_fingerprint(postfix_sha1) == sha1_hex
