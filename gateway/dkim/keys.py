"""DKIM private keys on disk and the DNS records that publish them.

Layout: ``<key_directory>/<domain>/<selector>.<algorithm>.key``, one PKCS#8 PEM
private key per file, unencrypted, mode 0600, directories 0700 (like
OpenDKIM's ``opendkim-genkey`` output, but named so one directory can hold an
RSA and an Ed25519 key for the same selector). The key directory is
``[dkim] key_directory`` (relative paths are taken against ``state_dir``),
default ``<state_dir>/dkim``: see :func:`gateway.dkim.settings.key_directory`.

The public half goes into DNS as a TXT record at
``<selector>._domainkey.<domain>`` (RFC 6376 §3.6.1; Ed25519 per RFC 8463 §4).
"""

from __future__ import annotations

import base64
import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

__all__ = [
    "ALGORITHMS",
    "KeyFile",
    "PrivateKey",
    "dns_name",
    "dns_record",
    "dns_txt_value",
    "ensure_key",
    "generate_key",
    "key_path",
    "list_keys",
    "load_private_key",
    "txt_strings",
]

ALGORITHMS = ("rsa", "ed25519")
"""Key types: ``rsa`` (RFC 6376 rsa-sha256) and ``ed25519`` (RFC 8463 ed25519-sha256)."""

PrivateKey: TypeAlias = "rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey"
# cryptography (9 MB in every process) is imported by the functions that use keys: the key
# names and paths here serve config checks and gateways that do not sign.

MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers reject anything shorter
MAX_RSA_BITS = 8192  # beyond this, generation takes minutes and the TXT record gets unwieldy
DEFAULT_RSA_BITS = 2048  # RFC 8301 §3.2: signers SHOULD use at least 2048 bits
_TXT_STRING_MAX = 255  # octets in one DNS character-string, RFC 1035 §3.3
_KEY_SUFFIX = ".key"
# A DNS name of letters, digits, '-' and '_' labels (selectors may have dots, RFC 6376 §3.1).
_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class KeyFile:
    """One private key file found under the key directory."""

    domain: str
    selector: str
    algorithm: str
    path: Path


def dns_name(value: str, kind: str = "domain") -> str:
    """Lowercase ``value`` without a trailing dot, checked to be a plain DNS name.

    ``kind`` ("domain", "selector") names the value in the error message.

    Raises:
        ValueError: when it is not (this also keeps ``..`` and ``/`` out of key paths).
    """
    name = value.strip().lower().rstrip(".")
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise ValueError(f"{kind} {value!r} is not a DNS name (letters, digits, '-', '_', dots)")
    return name


def _algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    return algorithm


def key_path(key_directory: Path, domain: str, selector: str, algorithm: str) -> Path:
    """The file of one key: ``key_directory / domain / f"{selector}.{algorithm}.key"``.

    ``domain`` and ``selector`` are lowercased and lose a trailing dot, so every
    caller finds the same file for ``Example.COM.`` and ``example.com``.

    Raises:
        ValueError: ``domain`` or ``selector`` is not a DNS name, or ``algorithm``
            is not in :data:`ALGORITHMS`.
    """
    return (
        Path(key_directory)
        / dns_name(domain, "domain")
        / f"{dns_name(selector, 'selector')}.{_algorithm(algorithm)}{_KEY_SUFFIX}"
    )


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents with mode 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created concurrently: fine, whoever made it chose its mode
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(temp: Path, path: Path) -> None:
    """Give ``temp`` the name ``path`` unless ``path`` exists, then drop the name ``temp``.

    Raises:
        FileExistsError: ``path`` exists.
    """
    try:
        # link() fails if the name exists, atomically: no check-then-rename race.
        os.link(temp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists (refusing to overwrite a DKIM key)") from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this file system (some FUSE/SMB mounts): check, then rename.
        if path.exists():
            raise FileExistsError(f"{path} exists (refusing to overwrite a DKIM key)") from None
        os.replace(temp, path)
        return
    temp.unlink()


def generate_key(path: Path, algorithm: str = "rsa", bits: int = DEFAULT_RSA_BITS, *, overwrite: bool = False) -> None:
    """Create a private key file: PKCS#8 PEM, unencrypted, mode 0600, written atomically.

    The key is written to a temporary file in the same directory, fsynced, then
    linked (or, with ``overwrite``, renamed) into place, so a reader never sees a
    partial key and a concurrent ``generate_key`` cannot be clobbered. Missing
    parent directories are created with mode 0700.

    Args:
        path: the key file, normally from :func:`key_path`.
        algorithm: ``"rsa"`` or ``"ed25519"``.
        bits: RSA modulus size in bits, 1024-8192 (ignored for Ed25519).
        overwrite: replace an existing file instead of refusing.

    Raises:
        ValueError: unknown algorithm or RSA size out of range.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        OSError: the file or its directories cannot be written.
    """
    _algorithm(algorithm)
    path = Path(path)
    if algorithm == "rsa" and not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise ValueError(f"RSA key size {bits} bits is outside {MIN_RSA_BITS}-{MAX_RSA_BITS} (RFC 8301 §3.2)")
    if not overwrite and path.exists():  # early, to skip generating a key for nothing
        raise FileExistsError(f"{path} exists (refusing to overwrite a DKIM key)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=bits)
        if algorithm == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _make_private_dirs(path.parent)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp already created it 0600
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            _link_new(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def load_private_key(path: Path) -> PrivateKey:
    """Read a PEM private key (PKCS#8 or traditional) written by :func:`generate_key` or OpenDKIM.

    Raises:
        ConfigError: key ``dkim``, value the path: unreadable, encrypted, not PEM,
            not RSA/Ed25519, or an RSA key shorter than 1024 bits (RFC 8301 §3.2).
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    allowed = "a readable, unencrypted PEM RSA (>= 1024 bits) or Ed25519 private key"
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError("dkim", str(path), f"{allowed} ({error.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ConfigError("dkim", str(path), f"{allowed} ({error})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError("dkim", str(path), f"{allowed} (RSA key has {key.key_size} bits)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ConfigError("dkim", str(path), f"{allowed} (found {type(key).__name__})")


def dns_txt_value(private_key: PrivateKey) -> str:
    """The DKIM key record's text for the public half of ``private_key``.

    RSA: ``v=DKIM1; k=rsa; p=<base64 of the DER SubjectPublicKeyInfo>`` (RFC 6376
    §3.6.1, the form OpenDKIM publishes). Ed25519: ``v=DKIM1; k=ed25519;
    p=<base64 of the raw 32-octet public key>`` (RFC 8463 §4).

    Raises:
        TypeError: for a key that is neither RSA nor Ed25519.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if isinstance(private_key, rsa.RSAPrivateKey):
        algorithm = "rsa"
        public = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif isinstance(private_key, ed25519.Ed25519PrivateKey):
        algorithm = "ed25519"
        public = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raise TypeError(f"not an RSA or Ed25519 private key: {type(private_key).__name__}")
    return f"v=DKIM1; k={algorithm}; p={base64.b64encode(public).decode('ascii')}"


def txt_strings(value: str) -> list[str]:
    """``value`` split into DNS character-strings of at most 255 octets (RFC 1035 §3.3).

    DKIM verifiers concatenate them without separators (RFC 6376 §3.6.2.2), so
    the split may fall anywhere; the value is ASCII, so octets equal characters.
    """
    return [value[i : i + _TXT_STRING_MAX] for i in range(0, len(value), _TXT_STRING_MAX)] or [""]


def dns_record(domain: str, selector: str, private_key: PrivateKey) -> str:
    """The zone-file line publishing ``private_key`` for ``selector`` of ``domain``.

    Shape: ``mail._domainkey.example.com.  IN TXT ( "v=DKIM1; k=rsa; p=..." "..." )``,
    the value split into strings of at most 255 octets (RFC 6376 §3.6.2.1).

    Raises:
        ValueError: ``domain`` or ``selector`` is not a DNS name.
        TypeError: the key is neither RSA nor Ed25519.
    """
    owner = f"{dns_name(selector, 'selector')}._domainkey.{dns_name(domain, 'domain')}."
    strings = " ".join(f'"{part}"' for part in txt_strings(dns_txt_value(private_key)))
    return f"{owner}  IN TXT ( {strings} )"


def ensure_key(
    key_directory: Path, domain: str, selector: str, algorithm: str, bits: int = DEFAULT_RSA_BITS
) -> tuple[Path, bool]:
    """Make sure the key for (domain, selector, algorithm) exists; returns (path, created).

    An existing file is kept as it is (created is False), also when another
    process creates it at the same moment.

    Raises:
        ValueError: bad domain, selector, algorithm or RSA size.
        OSError: the key cannot be written.
    """
    path = key_path(key_directory, domain, selector, algorithm)
    try:
        generate_key(path, algorithm, bits)
    except FileExistsError:
        return path, False
    return path, True


def list_keys(key_directory: Path, domain: str | None = None) -> list[KeyFile]:
    """The key files under ``key_directory`` (of one ``domain``, or all), sorted.

    Files not named ``<selector>.<algorithm>.key`` and temporary files are ignored;
    a missing directory gives an empty list.

    Raises:
        ValueError: ``domain`` is not a DNS name.
        OSError: a directory exists but cannot be listed.
    """
    root = Path(key_directory)
    if domain is not None:
        folders = [root / dns_name(domain, "domain")]
    elif root.is_dir():
        folders = sorted(entry for entry in root.iterdir() if entry.is_dir())
    else:
        folders = []
    found: list[KeyFile] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            stem, _, algorithm = entry.name.removesuffix(_KEY_SUFFIX).rpartition(".")
            if (
                not entry.name.endswith(_KEY_SUFFIX)
                or algorithm not in ALGORITHMS
                or not _NAME.fullmatch(stem)
                or not entry.is_file()
            ):
                continue
            found.append(KeyFile(folder.name, stem, algorithm, entry))
    return found
