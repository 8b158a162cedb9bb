"""SSLContext builders for the listeners and the relay client, and certificate fingerprints.

Server side (STARTTLS and SMTPS listeners): TLS 1.2 or newer; client
certificates are requested when ``smtpd_tls_CAfile`` is set but never required,
so a client without one still gets TLS.

What OpenSSL does with a client certificate under ``CERT_OPTIONAL`` (checked by
``tests/unit/tls/test_tls.py`` against OpenSSL 3.0):

* no certificate sent: the handshake succeeds, ``getpeercert()`` is ``None``;
* a certificate that chains to ``smtpd_tls_CAfile`` (or is itself in that file):
  the handshake succeeds, ``getpeercert()`` is the decoded, non-empty dict;
* a certificate that does *not* verify (unknown CA, expired, wrong purpose):
  the handshake *fails*. The server's handshake raises
  ``ssl.SSLCertVerificationError``; the client gets an alert (``unknown ca``,
  ``certificate expired``, ``unsupported certificate``), with TLS 1.2 during
  its handshake, with TLS 1.3 only on its first read after a handshake that
  looked successful. Python offers no verify callback to let
  such a client continue unauthenticated, as Postfix does.

So a certificate that reaches the application under ``CERT_OPTIONAL`` has been
verified. To name the certificate in the log line of a failed handshake, a
server context with a client CA file keeps the first certificate each client
presents (from the TLS Certificate message, through ``SSLContext._msg_callback``,
the only hook CPython 3.11 has into a handshake that fails):
:func:`presented_certificate_fingerprints`. ``getpeercert()`` returns ``{}`` only when the context did not ask
OpenSSL to verify (``CERT_NONE``, e.g. the ``may`` client below) yet a
certificate was received; :func:`peer_certificate_fingerprints` treats that as
"not verified" too.

Client side follows Postfix ``smtp_tls_security_level`` (postconf(5)):
``none``, ``may``, ``encrypt``, ``verify``.
"""

from __future__ import annotations

import hashlib
import re
import ssl
import weakref
from pathlib import Path
from typing import NoReturn

from gateway.errors import ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
CLIENT_SECURITY_LEVELS = ("none", "may", "encrypt", "verify")

# "SHA256 Fingerprint=" (OpenSSL 1.1) and "sha256 Fingerprint=" (OpenSSL 3) as
# printed by `openssl x509 -noout -fingerprint -sha256`.
_OPENSSL_PREFIX_RE = re.compile(r"^(?:(sha-?(?:1|256))\s+)?fingerprint\s*=\s*", re.IGNORECASE)
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_COLON_PAIRS_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2})*$")
# load_cert_chain errors that are about the certificate, not the key.
_WEAK_CERT_REASONS = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"})
_DIGEST_LENGTHS = {"sha1": 40, "sha-1": 40, "sha256": 64, "sha-256": 64}
# TLS record content type "handshake" and handshake type "certificate" (RFC 8446 §4, §5.1).
_HANDSHAKE_RECORD = 22
_CERTIFICATE_MESSAGE = 11
# The first certificate a client presented, per server-side SSLObject, until the object is gone.
_PRESENTED: weakref.WeakKeyDictionary[object, bytes] = weakref.WeakKeyDictionary()


class ServerTls:
    """The listeners' current server SSLContext, shared by every listener.

    A reload puts a freshly built context here (:meth:`replace`); each TLS
    handshake that starts afterwards (an implicit-TLS connection, a STARTTLS
    command) takes the new one, and sessions already encrypted keep the one they
    were made with. A new context, not an update of the live one:
    ``load_verify_locations`` only adds to a trust store, so a CA removed from
    ``smtpd_tls_CAfile`` would go on verifying.

    Args:
        context: the context built by :func:`server_context`.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def replace(self, context: ssl.SSLContext) -> None:
        """Use ``context`` for every handshake from now on."""
        self.context = context


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """Build the listeners' SSLContext (Postfix ``smtpd_tls_*``).

    Args:
        cert_file: PEM server certificate, optionally followed by its chain
            (``smtpd_tls_cert_file``); it may also hold the key.
        key_file: PEM private key, unencrypted (``smtpd_tls_key_file``).
        client_ca_file: PEM bundle of CAs for client certificates
            (``smtpd_tls_CAfile``), or None to not ask for client certificates.
            A certificate placed in the bundle is a trust anchor by itself
            (``VERIFY_X509_PARTIAL_CHAIN``), so a self-signed client certificate,
            or a leaf without its CA, can be trusted by listing just it.

    Returns:
        A ``PROTOCOL_TLS_SERVER`` context, TLS >= 1.2, ``check_hostname`` off;
        ``verify_mode`` is ``CERT_OPTIONAL`` with a client CA file and
        ``CERT_NONE`` without.

    Raises:
        ConfigError: a file is missing, unreadable, not PEM, the key is
            encrypted or does not match the certificate; ``key`` names the
            ``smtpd_tls_*`` setting at fault.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.check_hostname = False
    _load_cert_chain(ctx, cert_file, key_file, "smtpd_tls_cert_file", "smtpd_tls_key_file")
    if client_ca_file is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # CERT_OPTIONAL, not CERT_REQUIRED: the CertificateRequest goes out, but
        # a client that sends no certificate still gets TLS (RFC 3207 §4.1
        # forbids demanding one from publicly referenced servers).
        ctx.verify_mode = ssl.CERT_OPTIONAL
        _load_verify_locations(ctx, client_ca_file, "smtpd_tls_CAfile")
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        # Called for each TLS record of the context's connections: only where certificates are asked for.
        ctx._msg_callback = _remember_presented_certificate  # type: ignore[attr-defined]
    return ctx


def client_context(
    level: str,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
) -> ssl.SSLContext | None:
    """Build the relay client's SSLContext for a Postfix ``smtp_tls_security_level``.

    Args:
        level: ``"none"`` (no TLS), ``"may"`` (opportunistic), ``"encrypt"``
            (mandatory, unauthenticated) or ``"verify"`` (mandatory, the server
            certificate must chain to ``ca_file`` or the system CAs and match the
            ``server_hostname`` the caller passes to ``wrap_socket``/aiosmtplib).
        ca_file: PEM CA bundle (``smtp_tls_CAfile``), used by ``verify`` only
            (checked at every level); None means the system default CAs.
        cert_file: PEM client certificate chain (``smtp_tls_cert_file``), or
            None to present none.
        key_file: PEM private key (``smtp_tls_key_file``); None means the key is
            in ``cert_file``.

    Returns:
        None for ``none``; otherwise a ``PROTOCOL_TLS_CLIENT`` context, TLS >= 1.2.
        ``may`` and ``encrypt`` build the same context: whether a missing
        STARTTLS is acceptable is the caller's decision.

    Raises:
        ConfigError: unknown ``level``; ``key_file`` without ``cert_file``; a file
            missing or unloadable (``key`` names the ``smtp_tls_*`` setting).
    """
    if level not in CLIENT_SECURITY_LEVELS:
        raise ConfigError("smtp_tls_security_level", level, "one of " + ", ".join(CLIENT_SECURITY_LEVELS))
    if level == "none":
        return None
    if key_file is not None and cert_file is None:
        raise ConfigError("smtp_tls_key_file", str(key_file), "only together with smtp_tls_cert_file")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MINIMUM_VERSION
    if level == "verify":
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if ca_file is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            _load_verify_locations(ctx, ca_file, "smtp_tls_CAfile")
    else:
        # check_hostname must be switched off before CERT_NONE is allowed.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if ca_file is not None:
            # Not used to verify at this level, but a named file that is missing or
            # not PEM is a mistake to report at start, not when the level is raised.
            _load_verify_locations(ctx, ca_file, "smtp_tls_CAfile")
    if cert_file is not None:
        _load_cert_chain(
            ctx,
            cert_file,
            key_file if key_file is not None else cert_file,
            "smtp_tls_cert_file",
            "smtp_tls_key_file",
        )
    return ctx


def peer_certificate_fingerprints(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
) -> tuple[str, str] | None:
    """Return ``(sha256, sha1)`` of the peer's verified certificate, or None.

    Both are lowercase hex without colons, over the DER encoding, as Postfix
    ``check_ccert_access`` / ``relay_clientcerts`` compare them.

    A certificate counts only when OpenSSL verified it: ``getpeercert()`` must
    be a non-empty dict. It is None when no certificate was sent (or none was
    requested) and ``{}`` when the context had ``CERT_NONE`` but the peer sent
    one anyway; see the module docstring for why, under ``CERT_OPTIONAL``, an
    unverifiable certificate never gets this far.

    Args:
        ssl_object: ``transport.get_extra_info("ssl_object")`` or an SSLSocket;
            None (plain-text connection) gives None.

    Returns:
        ``(sha256_hex, sha1_hex)``, 64 and 40 characters, or None. None also
        when the handshake has not completed.
    """
    if ssl_object is None:
        return None
    try:
        decoded = ssl_object.getpeercert()
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, OSError):
        # ValueError: handshake not done yet; OSError: SSLSocket not connected.
        return None
    if not decoded or der is None:
        return None
    return hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest()


def presented_certificate_fingerprints(ssl_object: object) -> tuple[str, str] | None:
    """Return ``(sha256, sha1)`` of the first certificate the client presented, verified or not.

    For log lines about a handshake that failed (an unknown CA, an expired
    certificate): there :func:`peer_certificate_fingerprints` has nothing, as
    OpenSSL gives no peer certificate before a handshake completes. Never use it
    to decide trust.

    Args:
        ssl_object: the server-side ``ssl.SSLObject`` of the handshake, made from
            a :func:`server_context` with a client CA file; anything else gives None.

    Returns:
        ``(sha256_hex, sha1_hex)`` over the DER encoding, lowercase, or None when
        the client sent no certificate (or none was asked for).
    """
    try:
        der = _PRESENTED.get(ssl_object)
    except TypeError:  # not weakly referenceable: not an SSLObject
        return None
    if der is None:
        return None
    return hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest()


def _remember_presented_certificate(
    conn: object, direction: str, version: object, content_type: int, msg_type: int, data: bytes
) -> None:
    # OpenSSL passes each handshake message decrypted, TLS 1.3 ones too. An exception
    # here would fail the handshake: a message we cannot parse is just not remembered.
    if direction != "read" or content_type != _HANDSHAKE_RECORD or msg_type != _CERTIFICATE_MESSAGE:
        return
    try:
        der = _first_certificate(data, tls13=version == ssl.TLSVersion.TLSv1_3)
        if der:
            _PRESENTED[conn] = der
    except Exception:  # noqa: BLE001 - see above
        return


def _first_certificate(message: bytes, *, tls13: bool) -> bytes | None:
    """The first DER certificate of a Certificate handshake message (with its 4-byte header).

    RFC 5246 §7.4.2: ``certificate_list<0..2^24-1>`` of ``ASN.1Cert<1..2^24-1>``;
    RFC 8446 §4.4.2 puts a ``certificate_request_context<0..255>`` first.
    """
    offset = 4
    if tls13:
        offset += 1 + message[offset]
    if len(message) < offset + 6 or int.from_bytes(message[offset : offset + 3], "big") == 0:
        return None  # an empty list: no certificate sent
    length = int.from_bytes(message[offset + 3 : offset + 6], "big")
    der = message[offset + 6 : offset + 6 + length]
    return der if len(der) == length else None


def normalize_fingerprint(text: str) -> str:
    """Return a certificate fingerprint as lowercase hex without colons.

    Accepts ``"AA:BB:..."``, ``"aabb..."``, with an optional comment after
    whitespace (a Postfix lookup table line such as
    ``AA:BB:... trusted.mailserver.example.tld``), and the
    ``SHA256 Fingerprint=`` / ``sha1 Fingerprint=`` prefix of
    ``openssl x509 -noout -fingerprint``.

    Returns:
        40 hex digits (SHA-1) or 64 (SHA-256).

    Raises:
        ValueError: not hex, colons not between byte pairs, not 40 or 64
            digits, or a length that contradicts the algorithm named in the
            prefix.
    """
    stripped = text.strip()
    algorithm: str | None = None
    match = _OPENSSL_PREFIX_RE.match(stripped)
    if match:
        algorithm = match.group(1).lower() if match.group(1) else None
        stripped = stripped[match.end() :]
    token = stripped.split(maxsplit=1)[0].lower() if stripped else ""
    if ":" in token:
        if not _COLON_PAIRS_RE.match(token):
            raise ValueError(f"{text!r} is not a fingerprint: colons must separate byte pairs")
        token = token.replace(":", "")
    if not _HEX_RE.match(token):
        raise ValueError(f"{text!r} is not a hexadecimal fingerprint")
    expected = (_DIGEST_LENGTHS[algorithm],) if algorithm else (40, 64)
    if len(token) not in expected:
        wanted = " or ".join(str(n) for n in expected)
        raise ValueError(f"{text!r} has {len(token)} hex digits, not {wanted}")
    return token


def tls_session_info(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
) -> tuple[str | None, str | None]:
    """Return ``(protocol version, cipher name)``, e.g. ``("TLSv1.3", "TLS_AES_256_GCM_SHA384")``.

    Both are None for a plain-text connection or before the handshake completes.
    """
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    return ssl_object.version(), cipher[0] if cipher else None


def _load_cert_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path, cert_key: str, key_key: str) -> None:
    _require_file(cert_file, cert_key)
    _require_file(key_file, key_key)
    # load_cert_chain reports a bad certificate and a bad key with the same
    # "PEM lib" error; parsing the certificate file alone first tells them apart.
    _load_verify_locations(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert_file, cert_key)
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKey:
        raise ConfigError(key_key, str(key_file), "an unencrypted PEM private key") from None
    except ssl.SSLError as exc:
        if exc.reason in _WEAK_CERT_REASONS:
            raise ConfigError(
                cert_key, str(cert_file), f"a certificate OpenSSL's security level accepts ({exc})"
            ) from exc
        raise ConfigError(key_key, str(key_file), f"the PEM private key of {cert_file} ({exc})") from exc
    except OSError as exc:
        raise ConfigError(key_key, str(key_file), f"a readable PEM private key ({exc})") from exc


def _load_verify_locations(ctx: ssl.SSLContext, ca_file: Path, key: str) -> None:
    _require_file(ca_file, key)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(key, str(ca_file), f"a readable PEM file of certificates ({exc})") from exc


def _require_file(path: Path, key: str) -> None:
    if not path.is_file():
        raise ConfigError(key, str(path), "an existing PEM file")


class _EncryptedKey(Exception):
    """Raised by the password callback: the key is encrypted."""


def _refuse_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal and block the
    # daemon; a passphrase-protected key is a configuration error instead.
    raise _EncryptedKey
