"""A local certificate authority and the server certificate it signs.

The gateway needs a certificate for STARTTLS and SMTPS even when the operator
has none. Instead of a bare self-signed server certificate we keep a small CA
in ``tls_dir`` so that clients can pin one long-lived file (``ca.crt``) while
the server certificate is renewed every year without them noticing.

Files in ``tls_dir`` (created with mode 0700 when missing)::

    ca.crt       PEM, CA certificate, 10 years          mode 0644
                 (name-constrained to myhostname's domain, localhost, loopback)
    ca.key       PEM, CA private key (EC P-256)         mode 0600
    server.crt   PEM, server certificate, 365 days      mode 0644
    server.key   PEM, server private key (EC P-256)     mode 0600

Every file is written atomically (temporary file in the same directory, fsync,
``os.replace``, fsync of the directory), so a crash leaves either the old or the
new file, never half of one.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError
from gateway.tls import CA_CERT_NAME, CA_KEY_NAME, SERVER_CERT_NAME, SERVER_KEY_NAME

CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
# Backdate notBefore a little: a client whose clock runs slightly behind ours
# would otherwise reject a certificate issued a moment ago as "not yet valid".
_CLOCK_SKEW = timedelta(minutes=5)
# RFC 5280 Appendix A: ub-common-name is 64 characters.
_CN_MAX = 64

# The server certificate always names these, and the name constraint always permits them.
LOOPBACK_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True, slots=True)
class LocalCertificates:
    """Where the local CA and server certificate live.

    Attributes:
        ca_cert: PEM CA certificate, the file clients should trust.
        server_cert: PEM server certificate (leaf only; the CA is not appended).
        server_key: PEM server private key, mode 0600.
        renewed: True when this call wrote a new server certificate.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    renewed: bool


def ensure_local_certificates(tls_dir: Path, hostname: str, *, now: datetime | None = None) -> LocalCertificates:
    """Create or renew the local CA and server certificate in ``tls_dir``.

    The CA is created when ``ca.crt`` or ``ca.key`` is missing. The server key
    and certificate are (re)issued when either file is missing or unreadable,
    when the key does not match the certificate, when the certificate expires in
    less than 30 days, when it was not signed by the current CA, or when its
    subjectAltName does not name ``hostname``.

    Blocking (key generation, fsync): call it through ``asyncio.to_thread`` once
    the event loop runs.

    Args:
        tls_dir: directory for the four PEM files; created with mode 0700.
        hostname: the gateway's FQDN (Postfix ``myhostname``); an IP literal is
            put in the subjectAltName as an IP address.
        now: the current time (timezone-aware; naive means UTC). Used for the
            expiry check and as the issue time of new certificates, so tests can
            move the clock forward.

    Returns:
        The paths, and whether a new server certificate was written.

    Raises:
        ConfigError: ``ca.crt``/``ca.key`` exist but cannot be parsed or do not
            belong together. The CA is never replaced silently, because clients
            trust it; delete both files to start a new CA. Key ``"tls_dir"``;
            key ``"myhostname"`` when ``hostname`` is empty.
        OSError: the directory or a file cannot be created or written.
    """
    now = _utc(now if now is not None else datetime.now(UTC))
    hostname = _normalize_hostname(hostname)
    if not tls_dir.is_dir():
        tls_dir.mkdir(mode=0o700, parents=True)
        # mkdir's mode is filtered through the umask; the keys' directory must
        # end up 0700 whatever the umask of the caller.
        tls_dir.chmod(0o700)

    ca_cert_path = tls_dir / CA_CERT_NAME
    ca_key_path = tls_dir / CA_KEY_NAME
    server_cert_path = tls_dir / SERVER_CERT_NAME
    server_key_path = tls_dir / SERVER_KEY_NAME

    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
        _check_constraint(ca_cert, tls_dir, hostname)
    else:
        ca_cert, ca_key = _issue_ca(hostname, now)
        _write_atomic(ca_key_path, _key_pem(ca_key), 0o600)
        _write_atomic(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    renewed = False
    if _server_needs_renewal(server_cert_path, server_key_path, ca_cert, hostname, now):
        server_cert, server_key = _issue_server(hostname, ca_cert, ca_key, now)
        # Key first: a crash between the two writes leaves a key that does not
        # match the old certificate, which the next call detects and repairs.
        _write_atomic(server_key_path, _key_pem(server_key), 0o600)
        _write_atomic(server_cert_path, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        renewed = True

    return LocalCertificates(
        ca_cert=ca_cert_path,
        server_cert=server_cert_path,
        server_key=server_key_path,
        renewed=renewed,
    )


def check_local_ca(tls_dir: Path, hostname: str) -> None:
    """Check, without writing anything, the local CA that :func:`ensure_local_certificates` would use.

    Nothing to check when ``ca.crt`` or ``ca.key`` is missing (a new CA would be created).

    Raises:
        ConfigError: both files exist but cannot be parsed or do not belong
            together (key ``"tls_dir"``), or ``hostname`` is outside the CA's
            name constraint (key ``"myhostname"``), as :func:`ensure_local_certificates` raises.
        OSError: a file cannot be read.
    """
    if (tls_dir / CA_CERT_NAME).exists() and (tls_dir / CA_KEY_NAME).exists():
        ca_cert, _ = _load_ca(tls_dir / CA_CERT_NAME, tls_dir / CA_KEY_NAME)
        _check_constraint(ca_cert, tls_dir, _normalize_hostname(hostname))


def certificate_not_after(path: Path) -> datetime:
    """Return the notAfter of the first certificate in a PEM file, as aware UTC.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file holds no PEM certificate.
    """
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def _utc(moment: datetime) -> datetime:
    # X.509 times have whole seconds; dropping the rest here keeps notAfter
    # exactly now + validity.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _normalize_hostname(hostname: str) -> str:
    name = hostname.strip().rstrip(".").lower()
    if not name:
        raise ConfigError("myhostname", hostname, "a fully qualified host name")
    if not name.isascii():
        # subjectAltName dNSName is IA5String: internationalized names go in
        # as A-labels (RFC 5280 §7.2).
        name = name.encode("idna").decode("ascii")
    return name


def _ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


_IssuerKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, _IssuerKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "tls_dir", str(cert_path.parent), f"readable {CA_CERT_NAME} and {CA_KEY_NAME} ({exc})"
        ) from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)) or key.public_key() != cert.public_key():
        raise ConfigError(
            "tls_dir",
            str(cert_path.parent),
            f"{CA_KEY_NAME} must be the EC or RSA private key of {CA_CERT_NAME}; delete both to create a new local CA",
        )
    return cert, key


def _server_needs_renewal(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    hostname: str,
    now: datetime,
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        # Missing or damaged: these two files are ours to regenerate.
        return True
    if key.public_key() != cert.public_key():
        return True
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return True
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return True
    return not _names_host(cert, hostname)


def _names_host(cert: x509.Certificate, hostname: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    address = _ip_literal(hostname)
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    return hostname in san.get_values_for_type(x509.DNSName)


def _issue_ca(hostname: str, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    suffix = " gateway local CA"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[: _CN_MAX - len(suffix)] + suffix)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        # RFC 5280 §4.2.1.10: clients pin this CA, so its key can only vouch for our own names.
        .add_extension(
            x509.NameConstraints(permitted_subtrees=_permitted_names(hostname), excluded_subtrees=None), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _permitted_names(hostname: str) -> list[x509.GeneralName]:
    """The local CA's name constraint: ``myhostname``'s domain (or the host itself), localhost, loopback.

    ``mx.example.net`` gives ``example.net`` (every name in it, so the host may be
    renamed within the domain) and ``localhost``; an IP literal gives itself;
    127.0.0.1 and ::1 always (the server certificate names them).
    """
    address = _ip_literal(hostname)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if address is None and hostname != "localhost":
        labels = hostname.split(".")
        names.insert(0, x509.DNSName(".".join(labels[1:]) if len(labels) > 1 else hostname))
    if address is not None and address not in LOOPBACK_ADDRESSES:
        names.append(x509.IPAddress(ipaddress.ip_network(address)))
    names.extend(x509.IPAddress(ipaddress.ip_network(loopback)) for loopback in LOOPBACK_ADDRESSES)
    return names


def _check_constraint(ca_cert: x509.Certificate, ca_dir: Path, hostname: str) -> None:
    """Refuse a ``myhostname`` outside the name constraint of an existing local CA."""
    try:
        constraint = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return  # a CA from before name constraints: it constrains nothing
    permitted = [name.value for name in constraint.permitted_subtrees or [] if isinstance(name, x509.DNSName)]
    if _ip_literal(hostname) is not None or any(hostname == d or hostname.endswith("." + d) for d in permitted):
        return
    raise ConfigError(
        "myhostname",
        hostname,
        f"a name inside the local CA's name constraint ({', '.join(permitted)}); to use another "
        f"domain, delete {ca_dir / CA_CERT_NAME} and {ca_dir / CA_KEY_NAME} for a new local CA "
        "(clients that pinned the old one must pin the new one)",
    )


def _issue_server(
    hostname: str,
    ca_cert: x509.Certificate,
    ca_key: _IssuerKey,
    now: datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()

    alt_names: list[x509.GeneralName] = []
    address = _ip_literal(hostname)
    if address is None:
        alt_names.append(x509.DNSName(hostname))
    if hostname != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    if address is not None and address not in LOOPBACK_ADDRESSES:
        alt_names.append(x509.IPAddress(address))
    alt_names.extend(x509.IPAddress(loopback) for loopback in LOOPBACK_ADDRESSES)

    # Clients match on subjectAltName (RFC 6125 §6.4.4); the CN is only for
    # humans reading the certificate, and is left out when it would not fit.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)] if len(hostname) <= _CN_MAX else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=len(subject) == 0)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _key_pem(key: _IssuerKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file.

    mkstemp creates the temporary file with mode 0600, so a private key is
    never readable by others, not even for a moment; its random name also
    avoids clashing with a leftover from a crash of a process that had the same
    PID (PID 1 in every container).

    Raises:
        OSError: the file cannot be written, synced or renamed.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename itself is only durable once the directory entry is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
