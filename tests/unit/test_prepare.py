"""gateway.prepare: the one build-and-validate path of run, reload and check-config; DKIM records at start."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
import trustme

from gateway.config import build
from gateway.errors import ConfigError
from gateway.prepare import announce, prepare

LISTENER = [{"name": "smtp", "address": "127.0.0.1:2525", "tls": "starttls"}]


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def test_check_mode_builds_the_same_contexts_and_writes_nothing(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    config = build(
        {
            "state_dir": str(tmp_path / "var"),
            "listener": LISTENER,
            "smtpd_tls_CAfile": str(ca_file),
            "dkim": {"domains": ["example.com"]},
        },
        tmp_path,
    )
    checked = prepare(config, write_files=False)
    asyncio.run(checked.pipelines.aclose())
    assert not (tmp_path / "var").exists()
    assert checked.server_tls is not None and checked.server_tls.verify_mode is ssl.CERT_OPTIONAL
    assert checked.server_cert is None and checked.local_ca is None

    started = prepare(config)
    asyncio.run(started.pipelines.aclose())
    assert started.local_ca is not None and started.server_cert == tmp_path / "var/tls/server.crt"
    assert {"tls/ca.crt", "tls/server.crt", "dkim/example.com/mail.rsa.key"} <= _files(tmp_path / "var")


def test_check_mode_refuses_a_broken_local_ca_as_a_start_would(tmp_path: Path) -> None:
    (tmp_path / "var/tls").mkdir(parents=True)
    (tmp_path / "var/tls/ca.crt").write_text("not a certificate\n")
    (tmp_path / "var/tls/ca.key").write_text("not a key\n")
    config = build({"state_dir": str(tmp_path / "var"), "listener": LISTENER}, tmp_path)
    for write_files in (False, True):
        with pytest.raises(ConfigError) as caught:
            prepare(config, write_files=write_files)
        assert caught.value.key == "tls_dir"


def test_no_tls_listener_needs_no_server_context(tmp_path: Path) -> None:
    config = build(
        {
            "state_dir": str(tmp_path / "var"),
            "smtpd_tls_CAfile": str(tmp_path / "missing.pem"),
            "listener": [{"name": "plain", "address": "127.0.0.1:2525", "tls": "none"}],
        },
        tmp_path,
    )
    prepared = prepare(config, write_files=False)  # nothing would ask for client certificates: as at start
    assert prepared.server_tls is None


def test_each_dkim_record_is_logged_at_start_new_key_or_not(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = build({"state_dir": str(tmp_path / "var"), "dkim": {"domains": ["example.com", "example.org"]}}, tmp_path)
    records = []
    for _ in range(2):  # the first start creates the keys, the second finds them
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway"):
            prepared = prepare(config)
            announce(prepared)
        asyncio.run(prepared.pipelines.aclose())
        records.append(sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("dkim: d=")))
    assert records[0] == records[1] and len(records[0]) == 2
    assert records[0][0].startswith(
        'dkim: d=example.com s=mail a=rsa-sha256: DNS record mail._domainkey.example.com.  IN TXT ( "v=DKIM1; k=rsa; p='
    )
