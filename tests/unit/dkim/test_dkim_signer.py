"""gateway.dkim.signer: [dkim] parsing, signing-domain choice, key set-up, and signatures dkimpy verifies.

Independent verifiers (Mail::DKIM, rspamd) over the whole corpus are in
tests/policies/test_dkim_interop.py; here dkimpy's ``dkim.verify`` checks the
signatures, with the key records coming straight from the signer (``dnsfunc``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway import config as gateway_config
from gateway.dkim.keys import dns_txt_value, generate_key, load_private_key
from gateway.dkim.settings import DkimSettings
from gateway.dkim.signer import (
    OVERSIGNED_FIELDS,
    SIGNED_FIELDS,
    DkimSigner,
    author_domain,
    parse_message,
)
from gateway.errors import ConfigError

BOTH = ["rsa-sha256", "ed25519-sha256"]
NOW = 1_700_000_000  # unix seconds, frozen for byte-for-byte comparisons
MESSAGE = (
    b"Received: from client.example.net by gw.example.net; Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: quarterly  report\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <q1@example.com>\r\n"
    b"X-Mailer: test\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Numbers are up.\r\n"
    b"\r\n"
)


def settings(tmp_path: Path, **dkim_table: Any) -> DkimSettings:
    """DkimSettings of a config with ``state_dir = tmp_path`` and the given ``[dkim]`` keys."""
    return DkimSettings.from_config(gateway_config.build({"state_dir": str(tmp_path), "dkim": dkim_table}))


def ready_signer(tmp_path: Path, **dkim_table: Any) -> DkimSigner:
    """A DkimSigner for ``[dkim]`` (default: example.com, RSA) with its keys made by prepare()."""
    dkim_table.setdefault("domains", ["example.com"])
    signer = DkimSigner(settings(tmp_path, **dkim_table))
    signer.prepare()
    return signer


def require_nacl() -> None:
    """Fail (not skip) when PyNaCl is missing: dkimpy needs it to verify ed25519-sha256."""
    if importlib.util.find_spec("nacl") is None:
        pytest.fail("PyNaCl is not installed: `pip install pynacl` (dkimpy verifies ed25519 through it)", pytrace=False)


def dnsfunc_for(signer: DkimSigner) -> Callable[..., bytes]:
    """A dkimpy ``dnsfunc`` answering from the signer's own key records (no DNS)."""
    records = {record.name: record.value for record in signer.records()}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()

    return dnsfunc


def verify_all(signer: DkimSigner, signed: bytes) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of ``signed``, top down."""
    header = signed.partition(b"\r\n\r\n")[0]
    count = len(re.findall(rb"(?im)^dkim-signature:", header))
    if b"a=ed25519-sha256" in header:
        require_nacl()
    dnsfunc = dnsfunc_for(signer)
    results = []
    for index in range(count):
        try:
            results.append(bool(dkim.DKIM(signed).verify(idx=index, dnsfunc=dnsfunc)))
        except dkim.DKIMException:  # DKIM.verify raises where dkim.verify says False
            results.append(False)
    return results


def tags(field: bytes) -> dict[str, str]:
    """The tag=value pairs of one DKIM-Signature field, white space removed."""
    value = re.sub(r"\s+", "", field.decode().partition(":")[2])
    return dict(item.split("=", 1) for item in value.split(";") if item)


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """time.time() returns NOW, for the signer and for dkimpy (both call time.time)."""
    monkeypatch.setattr(time, "time", lambda: float(NOW))


# ---- [dkim] ---------------------------------------------------------------------------------


def test_no_dkim_table_means_signing_off(tmp_path: Path) -> None:
    result = DkimSettings.from_config(gateway_config.build({"state_dir": str(tmp_path)}))
    assert not result.enabled and result.domains == {}
    signer = DkimSigner(result)
    assert signer.prepare() == [] and signer.sign(MESSAGE) == b""


def test_defaults(tmp_path: Path) -> None:
    result = settings(tmp_path, domains=["Example.COM."])
    assert result.enabled and not result.subdomains
    assert result.rsa_bits == 2048
    assert result.key_directory == tmp_path / "dkim"
    domain = result.domains["example.com"]
    assert domain.algorithms == ("rsa-sha256",)
    assert domain.selectors == {"rsa-sha256": "mail"}
    assert domain.key_files == {"rsa-sha256": tmp_path / "dkim" / "example.com" / "mail.rsa.key"}
    assert domain.generated == {"rsa-sha256"}


def test_dual_signing_gets_its_own_ed25519_selector(tmp_path: Path) -> None:
    domain = settings(tmp_path, domains=["example.com"], algorithms=BOTH).domains["example.com"]
    assert domain.selectors == {"rsa-sha256": "mail", "ed25519-sha256": "mail-ed25519"}
    assert domain.key_files["ed25519-sha256"] == tmp_path / "dkim" / "example.com" / "mail-ed25519.ed25519.key"
    explicit = settings(
        tmp_path, domains=["example.com"], algorithms=BOTH, selector="s2024", ed25519_selector="e2024"
    ).domains["example.com"]
    assert explicit.selectors == {"rsa-sha256": "s2024", "ed25519-sha256": "e2024"}


def test_per_domain_overrides(tmp_path: Path) -> None:
    result = settings(
        tmp_path,
        domains=["example.com", "example.org"],
        algorithms=BOTH,
        subdomains=True,
        rsa_bits=1024,
        key_directory="keys",
        domain={"Example.ORG": {"selector": "2024", "algorithms": ["rsa-sha256"], "rsa_key": "org.pem"}},
    )
    assert result.subdomains and result.rsa_bits == 1024
    assert result.key_directory == tmp_path / "keys"
    com, org = result.domains["example.com"], result.domains["example.org"]
    assert com.selectors == {"rsa-sha256": "mail", "ed25519-sha256": "mail-ed25519"}
    assert org.selectors == {"rsa-sha256": "2024"}
    assert org.key_files == {"rsa-sha256": tmp_path / "org.pem"} and org.generated == frozenset()
    follows = settings(
        tmp_path, domains=["example.org"], algorithms=BOTH, domain={"example.org": {"selector": "2024"}}
    ).domains["example.org"]
    assert follows.selectors == {"rsa-sha256": "2024", "ed25519-sha256": "2024-ed25519"}


def test_unicode_domain_is_kept_as_a_labels(tmp_path: Path) -> None:
    assert list(settings(tmp_path, domains=["Bücher.example"]).domains) == ["xn--bcher-kva.example"]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"domains": "example.com"}, "dkim.domains"),
        ({"domains": ["not a domain"]}, "dkim.domains"),
        ({"domains": ["localhost"]}, "dkim.domains"),
        ({"domains": ["example.com", "EXAMPLE.com"]}, "dkim.domains"),
        ({"selector": "bad selector"}, "dkim.selector"),
        ({"selector": ""}, "dkim.selector"),
        ({"ed25519_selector": "a/b"}, "dkim.ed25519_selector"),
        ({"algorithms": ["rsa-sha1"]}, "dkim.algorithms"),
        ({"algorithms": []}, "dkim.algorithms"),
        ({"algorithms": ["rsa-sha256", "rsa-sha256"]}, "dkim.algorithms"),
        ({"algorithms": "rsa-sha256"}, "dkim.algorithms"),
        ({"rsa_bits": 512}, "dkim.rsa_bits"),
        ({"rsa_bits": 16384}, "dkim.rsa_bits"),
        ({"rsa_bits": "2048"}, "dkim.rsa_bits"),
        ({"rsa_bits": True}, "dkim.rsa_bits"),
        ({"subdomains": "yes"}, "dkim.subdomains"),
        ({"key_directory": 5}, "dkim.key_directory"),
        ({"canonicalization": "simple/simple"}, "dkim.canonicalization"),
        ({"algorithms": BOTH, "ed25519_selector": "mail"}, "dkim.ed25519_selector"),
        ({"domain": "example.com"}, "dkim.domain"),
        ({"domain": {"example.net": {}}}, "dkim.domain.example.net"),
        ({"domain": {"example.com": "2024"}}, "dkim.domain.example.com"),
        ({"domain": {"example.com": {"selector": "x y"}}}, "dkim.domain.example.com.selector"),
        ({"domain": {"example.com": {"algorithms": ["ed448-sha256"]}}}, "dkim.domain.example.com.algorithms"),
        ({"domain": {"example.com": {"ed25519_key": "ed.pem"}}}, "dkim.domain.example.com.ed25519_key"),
        ({"domain": {"example.com": {"rsa_key": 5}}}, "dkim.domain.example.com.rsa_key"),
        ({"domain": {"example.com": {"key_directory": "x"}}}, "dkim.domain.example.com.key_directory"),
        (
            {"algorithms": BOTH, "domain": {"example.com": {"ed25519_selector": "mail"}}},
            "dkim.domain.example.com.ed25519_selector",
        ),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, table: dict[str, Any], key: str) -> None:
    table = {"domains": ["example.com"], **table}
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, **table)
    assert caught.value.key == key
    assert caught.value.allowed


def test_key_file_problems_are_config_errors(tmp_path: Path) -> None:
    missing = settings(tmp_path, domains=["example.com"], domain={"example.com": {"rsa_key": "none.pem"}})
    with pytest.raises(ConfigError) as caught:
        DkimSigner(missing)
    assert caught.value.key == "dkim.domain.example.com.rsa_key"
    assert caught.value.value == str(tmp_path / "none.pem")

    generate_key(tmp_path / "ed.pem", "ed25519")
    wrong_type = settings(tmp_path, domains=["example.com"], domain={"example.com": {"rsa_key": "ed.pem"}})
    with pytest.raises(ConfigError, match="rsa private key") as caught:
        DkimSigner(wrong_type)
    assert caught.value.key == "dkim.domain.example.com.rsa_key"

    corrupt = tmp_path / "dkim" / "example.com" / "mail.rsa.key"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text("not a key\n")
    with pytest.raises(ConfigError) as caught:
        DkimSigner(settings(tmp_path, domains=["example.com"]))
    assert caught.value.key == "dkim.key_directory"
    assert caught.value.value == str(corrupt)


# ---- keys made at start -------------------------------------------------------------------


def test_prepare_generates_missing_keys_and_returns_their_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = DkimSigner(settings(tmp_path, domains=["example.com"], algorithms=BOTH, rsa_bits=1024))
    with pytest.raises(RuntimeError, match="prepare"):
        signer.sign(MESSAGE)  # no keys yet
    with caplog.at_level(logging.INFO, logger="gateway.dkim"):
        records = signer.prepare()
    rsa_file = tmp_path / "dkim" / "example.com" / "mail.rsa.key"
    ed_file = tmp_path / "dkim" / "example.com" / "mail-ed25519.ed25519.key"
    rsa_key, ed_key = load_private_key(rsa_file), load_private_key(ed_file)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 1024
    assert isinstance(ed_key, ed25519.Ed25519PrivateKey)
    assert stat.S_IMODE(rsa_file.stat().st_mode) == 0o600
    assert [(r.name, r.algorithm, r.value) for r in records] == [
        ("mail._domainkey.example.com", "rsa-sha256", dns_txt_value(rsa_key)),
        ("mail-ed25519._domainkey.example.com", "ed25519-sha256", dns_txt_value(ed_key)),
    ]
    assert records[0].value.startswith("v=DKIM1; k=rsa; p=MI")
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", records[1].value)
    assert records[0].zone_line.startswith('mail._domainkey.example.com.  IN TXT ( "v=DKIM1; k=rsa; ')
    assert str(records[1]) == records[1].zone_line
    logged = [record.getMessage() for record in caplog.records if record.name == "gateway.dkim"]
    assert len(logged) == 2 and all(r.zone_line in text for r, text in zip(records, logged, strict=True))

    again = DkimSigner(settings(tmp_path, domains=["example.com"], algorithms=BOTH))
    assert again.prepare() == []  # keys exist: nothing generated, nothing to publish anew
    assert again.records() == records


def test_prepare_never_generates_an_explicit_key(tmp_path: Path) -> None:
    generate_key(tmp_path / "mine.pem", "rsa", 1024)
    signer = DkimSigner(
        settings(tmp_path, domains=["example.com"], algorithms=BOTH, domain={"example.com": {"rsa_key": "mine.pem"}})
    )
    records = signer.prepare()
    assert [r.algorithm for r in records] == ["ed25519-sha256"]
    assert not (tmp_path / "dkim" / "example.com" / "mail.rsa.key").exists()
    assert signer.records()[0].value == dns_txt_value(load_private_key(tmp_path / "mine.pem"))


# ---- which messages are signed, and for which d= -------------------------------------------


def with_from(*values: str) -> bytes:
    """MESSAGE with its From field replaced by one field per value (none: no From at all)."""
    fields = b"".join(f"From: {value}\r\n".encode() for value in values)
    return MESSAGE.replace(b"From: Alice Example <alice@example.com>\r\n", fields)


@pytest.mark.parametrize(
    ("from_values", "subdomains", "d"),
    [
        (["Alice Example <alice@example.com>"], False, "example.com"),
        (['"Example, Alice (Sales)" <Alice@EXAMPLE.COM.>'], False, "example.com"),
        (["alice@example.com (Alice)"], False, "example.com"),
        (["=?utf-8?q?Al=C3=AFce?= <alice@example.com>"], False, "example.com"),
        (['"bob@example.com" <mallory@example.net>'], False, None),
        (["Alice <alice@example.net>"], False, None),
        (["alice@news.example.com"], False, None),
        (["alice@news.example.com"], True, "example.com"),
        (["alice@a.b.example.com"], True, "example.com"),
        (["alice@notexample.com"], True, None),
        (["alice@sub.example.org"], True, "sub.example.org"),  # listed itself: wins over example.org
        (["alice@x.sub.example.org"], True, "sub.example.org"),  # closest listed parent
        (["alice@example.com", "bob@example.net"], False, "example.com"),  # first From field decides
        (["bob@example.net", "alice@example.com"], False, None),
        (["alice@example.com, bob@example.net"], False, "example.com"),  # first address decides
        (["undisclosed-recipients:;"], False, None),
        (["no address here"], False, None),
        ([], False, None),
    ],
)
def test_signing_domain_follows_the_first_from(
    tmp_path: Path, from_values: list[str], subdomains: bool, d: str | None
) -> None:
    signer = ready_signer(
        tmp_path, domains=["example.com", "example.org", "sub.example.org"], subdomains=subdomains, rsa_bits=1024
    )
    field = signer.sign(with_from(*from_values))
    if d is None:
        assert field == b""
        return
    assert tags(field)["d"] == d and tags(field)["i"] == f"@{d}"
    assert verify_all(signer, field + with_from(*from_values)) == [True]


def test_unicode_from_domain_signs_with_a_labels(tmp_path: Path) -> None:
    signer = ready_signer(tmp_path, domains=["bücher.example"], rsa_bits=1024)
    message = with_from("=?utf-8?q?J=C3=BCrgen?= <juergen@BÜCHER.example>")
    field = signer.sign(message)
    assert tags(field)["d"] == "xn--bcher-kva.example"
    assert verify_all(signer, field + message) == [True]


def test_author_domain() -> None:
    assert author_domain("Alice <alice@Example.COM>") == "example.com"
    assert author_domain("alice@xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert author_domain("alice@[192.0.2.1]") is None
    assert author_domain("<>") is None


def test_parse_message() -> None:
    parsed = parse_message(
        b"From sender@example.com Mon Jan  1 00:00:00 2024\r\nSubject: a\r\n b\r\nTo: x@example.org\n\nbody\nline\n"
    )
    assert parsed is not None
    headers, body = parsed
    assert headers == [[b"Subject", b" a\r\n b\r\n"], [b"To", b" x@example.org\r\n"]]
    assert body == b"body\r\nline\r\n"
    assert parse_message(b"From: a@example.com\r\n") == ([[b"From", b" a@example.com\r\n"]], b"")
    assert parse_message(b"") == ([], b"")
    assert parse_message(b" folded first\r\nFrom: a@example.com\r\n\r\n") is None
    assert parse_message(b"From: a@example.com\r\nnot a field\r\n\r\n") is None
    assert parse_message(b"From: a@example.com\r\nTo : b@example.org\r\n\r\n") is None
    assert parse_message(b"From  : a@example.com\r\n\r\n") is None  # obs syntax, not an mbox line
    assert parse_message(b"From: a@example.com\r\nFrom b@example.org\r\n\r\n") is None


def test_unparsable_header_is_not_signed(tmp_path: Path) -> None:
    signer = ready_signer(tmp_path, rsa_bits=1024)
    assert signer.sign(MESSAGE.replace(b"X-Mailer: test\r\n", b"X-Mailer test\r\n")) == b""


# ---- the signatures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state_dir with 2048-bit RSA and Ed25519 keys for example.com, shared by the signing tests."""
    state = tmp_path_factory.mktemp("dkim-keys")
    ready_signer(state, algorithms=BOTH)
    return state


def test_rsa_cryptography_and_dkimpy_sign_byte_for_byte_alike(key_dir: Path, frozen_time: None) -> None:
    fast = DkimSigner(settings(key_dir, domains=["example.com"]))
    slow = DkimSigner(settings(key_dir, domains=["example.com"]), use_cryptography=False)
    ours, theirs = fast.sign(MESSAGE), slow.sign(MESSAGE)
    assert ours == theirs  # RSASSA-PKCS1-v1_5 is deterministic
    assert ours.startswith(b"DKIM-Signature: ") and ours.endswith(b"\r\n") and ours.count(b"DKIM-Signature") == 1
    assert dkim.verify(ours + MESSAGE, dnsfunc=dnsfunc_for(fast))
    assert dkim.verify(theirs + MESSAGE, dnsfunc=dnsfunc_for(slow))
    assert tags(ours)["t"] == str(NOW)


def test_ed25519_verifies_and_matches_dkimpy(key_dir: Path, frozen_time: None) -> None:
    signer = DkimSigner(settings(key_dir, domains=["example.com"], algorithms=["ed25519-sha256"]))
    field = signer.sign(MESSAGE)
    assert tags(field)["a"] == "ed25519-sha256" and tags(field)["s"] == "mail-ed25519"
    assert re.fullmatch(r"[A-Za-z0-9+/]{86}==", tags(field)["b"])  # 64 octets (RFC 8463 §3)
    require_nacl()
    assert dkim.verify(field + MESSAGE, dnsfunc=dnsfunc_for(signer))
    dkimpy = DkimSigner(
        settings(key_dir, domains=["example.com"], algorithms=["ed25519-sha256"]), use_cryptography=False
    )
    assert dkimpy.sign(MESSAGE) == field  # Ed25519 is deterministic too


def test_dual_signing_gives_two_fields_that_both_verify(key_dir: Path, frozen_time: None) -> None:
    signer = DkimSigner(settings(key_dir, domains=["example.com"], algorithms=BOTH))
    fields = signer.sign(MESSAGE)
    parts = [b"DKIM-Signature:" + part for part in fields.split(b"DKIM-Signature:")[1:]]
    assert [tags(part)["a"] for part in parts] == BOTH
    assert [tags(part)["s"] for part in parts] == ["mail", "mail-ed25519"]
    assert tags(parts[0])["t"] == tags(parts[1])["t"] == str(NOW)
    assert tags(parts[0])["bh"] == tags(parts[1])["bh"]
    assert verify_all(signer, fields + MESSAGE) == [True, True]
    dkimpy = DkimSigner(settings(key_dir, domains=["example.com"], algorithms=BOTH), use_cryptography=False)
    assert dkimpy.sign(MESSAGE) == fields
    for one in (signer, dkimpy):  # the labels for metrics and logs come with each field
        signatures = one.signatures(MESSAGE)
        assert [(s.domain, s.algorithm) for s in signatures] == [("example.com", a) for a in BOTH]
        assert [s.field for s in signatures] == parts


def test_signature_tags_and_signed_fields(key_dir: Path, frozen_time: None) -> None:
    message = MESSAGE.replace(
        b"X-Mailer: test\r\n",
        b"X-Mailer: test\r\nList-Unsubscribe: <https://example.com/u>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nBcc: hidden@example.org\r\n"
        b"Return-Path: <alice@example.com>\r\nTO: carol@example.org\r\n",
    )
    field = DkimSigner(settings(key_dir, domains=["example.com"])).sign(message)
    found = tags(field)
    assert {k: found[k] for k in ("v", "a", "c", "d", "i", "q", "s", "t")} == {
        "v": "1",
        "a": "rsa-sha256",
        "c": "relaxed/relaxed",
        "d": "example.com",
        "i": "@example.com",
        "q": "dns/txt",
        "s": "mail",
        "t": str(NOW),
    }
    assert found["h"].split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "to",
        "mime-version",
        "content-type",
        "from",
    ]
    assert "x" not in found and "l" not in found  # no expiry, no body length limit (RFC 6376 §8.2)
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))  # folded (RFC 5322 §2.1.1)
    assert {"from", "subject", "list-unsubscribe-post"} <= SIGNED_FIELDS
    assert not {"received", "return-path", "bcc", "dkim-signature"} & SIGNED_FIELDS
    assert OVERSIGNED_FIELDS == {"from"}


def test_from_is_oversigned(key_dir: Path) -> None:
    signer = DkimSigner(settings(key_dir, domains=["example.com"], algorithms=BOTH))
    fields = signer.sign(MESSAGE)
    assert verify_all(signer, fields + MESSAGE) == [True, True]
    extra_from = b"From: Mallory <mallory@example.net>\r\n"
    for tampered in (
        fields + extra_from + MESSAGE,
        fields + MESSAGE.replace(b"\r\n\r\n", b"\r\n" + extra_from + b"\r\n", 1),
    ):
        assert verify_all(signer, tampered) == [False, False]
    # a field nobody signs may be added on the way; the signature holds
    assert verify_all(signer, fields + b"X-Added: relay\r\n" + MESSAGE) == [True, True]


def test_two_from_fields_are_all_signed_plus_one(key_dir: Path) -> None:
    signer = DkimSigner(settings(key_dir, domains=["example.com"]))
    message = with_from("alice@example.com", "bob@example.org")
    field = signer.sign(message)
    assert tags(field)["h"].split(":").count("from") == 3
    assert verify_all(signer, field + message) == [True]
    assert verify_all(signer, field + b"From: x@example.net\r\n" + message) == [False]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Numbers are up.", b"Numbers are down."),  # body
        (b"\r\n\r\nNumbers", b"\r\n\r\nP.S.\r\nNumbers"),  # a line added to the body
        (b"Subject: quarterly  report", b"Subject: quarterly report (fixed)"),  # a signed field
        (b"Message-ID: <q1@example.com>", b"Message-ID: <q2@example.com>"),
    ],
)
def test_tampering_breaks_both_signatures(key_dir: Path, old: bytes, new: bytes) -> None:
    signer = DkimSigner(settings(key_dir, domains=["example.com"], algorithms=BOTH))
    fields = signer.sign(MESSAGE)
    assert verify_all(signer, fields + MESSAGE.replace(old, new)) == [False, False]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Subject: quarterly  report", b"Subject:   quarterly\r\n\treport "),  # refolded (relaxed header)
        (b"Numbers are up.\r\n\r\n", b"Numbers  are up.  \r\n\r\n\r\n"),  # white space, empty lines (relaxed body)
        (b"X-Mailer: test\r\n", b""),  # unsigned field removed
        (b"Received: from", b"Received: by relay.example.net; Mon, 01 Jan 2024 00:00:01 +0000\r\nReceived: from"),
    ],
)
def test_relaxed_canonicalization_tolerates(key_dir: Path, old: bytes, new: bytes) -> None:
    signer = DkimSigner(settings(key_dir, domains=["example.com"], algorithms=BOTH))
    fields = signer.sign(MESSAGE)
    assert verify_all(signer, fields + MESSAGE.replace(old, new)) == [True, True]


def test_lf_only_message_gets_a_crlf_field(key_dir: Path) -> None:
    signer = DkimSigner(settings(key_dir, domains=["example.com"]))
    field = signer.sign(MESSAGE.replace(b"\r\n", b"\n"))
    assert field.endswith(b"\r\n") and b"\n" not in field.replace(b"\r\n", b"")
    assert verify_all(signer, field + MESSAGE) == [True]


def test_private_key_formats_from_other_tools_load(tmp_path: Path, frozen_time: None) -> None:
    """An OpenDKIM-style traditional RSA PEM works as an explicit rsa_key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "opendkim.private").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    signer = DkimSigner(
        settings(tmp_path, domains=["example.com"], domain={"example.com": {"rsa_key": "opendkim.private"}})
    )
    assert signer.prepare() == []
    field = signer.sign(MESSAGE)
    assert dkim.verify(field + MESSAGE, dnsfunc=dnsfunc_for(signer))
