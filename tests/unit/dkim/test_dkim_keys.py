"""DKIM key files and their DNS records: modes, PEM, refusal to overwrite, TXT values a verifier accepts."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gateway.config import build
from gateway.dkim import keys as dkim_keys
from gateway.dkim.settings import key_directory
from gateway.errors import ConfigError

MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
    b"Date: Tue, 01 Apr 2025 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHi Bob.\r\n"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tags(value: str) -> dict[str, str]:
    return {tag.strip(): text.strip() for tag, _, text in (part.partition("=") for part in value.split(";"))}


def _record_strings(record: str) -> list[str]:
    match = re.fullmatch(r'(\S+)  IN TXT \( ((?:"[^"]*" ?)+)\)', record)
    assert match, record
    return re.findall(r'"([^"]*)"', match.group(2))


def test_key_path_layout_and_normalisation(tmp_path):
    assert dkim_keys.key_path(tmp_path, "example.com", "mail", "rsa") == tmp_path / "example.com" / "mail.rsa.key"
    assert (
        dkim_keys.key_path(tmp_path, "Example.COM.", "Sel.2025", "ed25519")
        == tmp_path / "example.com" / "sel.2025.ed25519.key"
    )


@pytest.mark.parametrize(
    "domain, selector, algorithm",
    [
        ("../etc", "mail", "rsa"),
        ("example.com", "a/b", "rsa"),
        ("", "mail", "rsa"),
        ("example.com", "mail", "dsa"),
        ("example..com", "mail", "rsa"),
    ],
)
def test_key_path_rejects_bad_names(tmp_path, domain, selector, algorithm):
    with pytest.raises(ValueError):
        dkim_keys.key_path(tmp_path, domain, selector, algorithm)


@pytest.mark.parametrize(
    "algorithm, bits, key_type, size",
    [
        ("rsa", 2048, rsa.RSAPrivateKey, 2048),
        ("rsa", 1024, rsa.RSAPrivateKey, 1024),
        ("ed25519", 2048, ed25519.Ed25519PrivateKey, None),
    ],
)
def test_generate_key_writes_private_pkcs8_pem(tmp_path, algorithm, bits, key_type, size):
    path = dkim_keys.key_path(tmp_path / "keys", "example.com", "mail", algorithm)
    dkim_keys.generate_key(path, algorithm, bits)
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not "RSA PRIVATE KEY", unencrypted
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, key_type)
    if size:
        assert key.key_size == size
    assert isinstance(dkim_keys.load_private_key(path), key_type)
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_generate_key_default_is_rsa_2048(tmp_path):
    path = tmp_path / "k.key"
    dkim_keys.generate_key(path)
    key = dkim_keys.load_private_key(path)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


@pytest.mark.parametrize("algorithm, bits", [("rsa", 512), ("rsa", 1023), ("rsa", 16384), ("dsa", 2048)])
def test_generate_key_rejects_bad_parameters(tmp_path, algorithm, bits):
    with pytest.raises(ValueError):
        dkim_keys.generate_key(tmp_path / "k.key", algorithm, bits)
    assert not (tmp_path / "k.key").exists()


def test_generate_key_refuses_to_overwrite(tmp_path):
    path = tmp_path / "example.com" / "mail.ed25519.key"
    dkim_keys.generate_key(path, "ed25519")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        dkim_keys.generate_key(path, "ed25519")
    assert path.read_bytes() == before
    dkim_keys.generate_key(path, "ed25519", overwrite=True)
    assert path.read_bytes() != before and _mode(path) == 0o600
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]


def test_ensure_key_is_idempotent(tmp_path):
    path, created = dkim_keys.ensure_key(tmp_path, "example.com", "mail", "rsa", bits=1024)
    assert created and path == dkim_keys.key_path(tmp_path, "example.com", "mail", "rsa")
    content = path.read_bytes()
    assert dkim_keys.ensure_key(tmp_path, "example.com", "mail", "rsa", bits=1024) == (path, False)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "content", [b"", b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_load_private_key_names_key_and_path(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        dkim_keys.load_private_key(path)
    assert info.value.key == "dkim" and info.value.value == str(path)


def test_load_private_key_rejects_missing_encrypted_and_other_types(tmp_path):
    with pytest.raises(ConfigError, match="dkim"):
        dkim_keys.load_private_key(tmp_path / "missing.key")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError):
        dkim_keys.load_private_key(encrypted)
    other = tmp_path / "ec.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="RSA"):
        dkim_keys.load_private_key(other)


def test_rsa_txt_value_verifies_a_signature(tmp_path):
    path = tmp_path / "k.key"
    dkim_keys.generate_key(path, "rsa")
    private_key = dkim_keys.load_private_key(path)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    value = dkim_keys.dns_txt_value(private_key)
    assert value.startswith("v=DKIM1; k=rsa; p=")
    tags = _tags(value)
    public_key = serialization.load_der_public_key(base64.b64decode(tags["p"], validate=True))
    assert isinstance(public_key, rsa.RSAPublicKey)
    signature = private_key.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    public_key.verify(signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())  # raises if the key differs


def test_ed25519_txt_value_is_the_raw_public_key(tmp_path):
    path = tmp_path / "k.key"
    dkim_keys.generate_key(path, "ed25519")
    private_key = dkim_keys.load_private_key(path)
    assert isinstance(private_key, ed25519.Ed25519PrivateKey)
    value = dkim_keys.dns_txt_value(private_key)
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(_tags(value)["p"], validate=True)
    assert len(raw) == 32  # RFC 8463 §4: the bare key, not a SubjectPublicKeyInfo
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(private_key.sign(MESSAGE), MESSAGE)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_dkimpy_verifies_with_the_published_value(tmp_path, algorithm):
    """The TXT value as a real verifier sees it (dkimpy, the library the signer uses)."""
    path, _ = dkim_keys.ensure_key(tmp_path, "example.com", "mail", algorithm)
    private_key = dkim_keys.load_private_key(path)
    record = dkim_keys.dns_record("example.com", "mail", private_key)
    published = "".join(_record_strings(record)).encode()
    secret = path.read_bytes()
    if isinstance(private_key, ed25519.Ed25519PrivateKey):  # dkimpy wants the base64 raw seed, not PEM
        secret = base64.b64encode(
            private_key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        )
    signed = (
        dkim.sign(
            MESSAGE,
            b"mail",
            b"example.com",
            secret,
            signature_algorithm=b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256",
            include_headers=[b"from", b"to", b"subject"],
        )
        + MESSAGE
    )

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mail._domainkey.example.com."
        return published

    assert dkim.verify(signed, dnsfunc=dnsfunc)


@pytest.mark.parametrize("algorithm, bits, strings", [("ed25519", 2048, 1), ("rsa", 2048, 2), ("rsa", 4096, 3)])
def test_dns_record_splits_into_255_octet_strings(tmp_path, algorithm, bits, strings):
    path = tmp_path / "k.key"
    dkim_keys.generate_key(path, algorithm, bits)
    private_key = dkim_keys.load_private_key(path)
    record = dkim_keys.dns_record("Example.com.", "mail", private_key)
    assert record.startswith('mail._domainkey.example.com.  IN TXT ( "v=DKIM1; ')
    parts = _record_strings(record)
    assert len(parts) == strings
    assert all(0 < len(part.encode()) <= 255 for part in parts)
    assert "".join(parts) == dkim_keys.dns_txt_value(private_key)


def test_list_keys_finds_keys_and_ignores_other_files(tmp_path):
    rsa_path, _ = dkim_keys.ensure_key(tmp_path, "example.com", "mail", "rsa", bits=1024)
    ed_path, _ = dkim_keys.ensure_key(tmp_path, "example.com", "ed", "ed25519")
    other, _ = dkim_keys.ensure_key(tmp_path, "example.org", "s1.2025", "ed25519")
    (tmp_path / "example.com" / "README").write_text("x")
    (tmp_path / "example.com" / ".mail.rsa.key.abc.tmp").write_text("x")
    (tmp_path / "example.com" / "mail.dsa.key").write_text("x")
    assert dkim_keys.list_keys(tmp_path, "EXAMPLE.com") == [
        dkim_keys.KeyFile("example.com", "ed", "ed25519", ed_path),
        dkim_keys.KeyFile("example.com", "mail", "rsa", rsa_path),
    ]
    assert [key.path for key in dkim_keys.list_keys(tmp_path)] == [ed_path, rsa_path, other]
    assert dkim_keys.list_keys(tmp_path, "example.net") == []
    assert dkim_keys.list_keys(tmp_path / "missing") == []


def test_key_directory_from_config(tmp_path):
    assert key_directory(build({"state_dir": str(tmp_path)})) == tmp_path / "dkim"
    assert key_directory(build({"state_dir": str(tmp_path), "dkim": {"key_directory": "keys"}})) == tmp_path / "keys"
    assert key_directory(build({"state_dir": str(tmp_path), "dkim": {"key_directory": "/etc/dkim"}})) == Path(
        "/etc/dkim"
    )
    with pytest.raises(ConfigError, match="dkim.key_directory"):
        key_directory(build({"dkim": {"key_directory": 5}}))
