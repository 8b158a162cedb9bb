"""gateway.auth: the [auth] table and the passwd_file back end (Dovecot passwd-file and htpasswd lines)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from passlib.hash import apr_md5_crypt, argon2, bcrypt, sha256_crypt, sha512_crypt

from gateway import config as gateway_config
from gateway.auth import AuthClient, AuthOutcome, AuthSettings, build_authenticator
from gateway.auth.passwd_file import PasswdFile, parse_line, set_password
from gateway.errors import ConfigError

FAST_BCRYPT = bcrypt.using(rounds=4)
FAST_ARGON2 = argon2.using(type="ID", rounds=1, memory_cost=1024)


def config_with(tmp_path: Path, auth: dict[str, object], listener_auth: str = "required") -> gateway_config.Config:
    return gateway_config.build(
        {
            "state_dir": str(tmp_path),
            "auth": auth,
            "listener": [{"name": "submission", "address": "127.0.0.1:2587", "tls": "starttls", "auth": listener_auth}],
        }
    )


@pytest.mark.parametrize(
    ("line", "scheme"),
    [
        ("alice:{BLF-CRYPT}" + FAST_BCRYPT.hash("pw") + "::::::", "bcrypt"),
        ("alice:{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash("pw"), "sha512_crypt"),
        ("alice:{SHA256-CRYPT}" + sha256_crypt.using(rounds=5000).hash("pw"), "sha256_crypt"),
        ("alice:{ARGON2ID}" + FAST_ARGON2.hash("pw"), "argon2"),
        ("alice:" + FAST_BCRYPT.hash("pw").replace("$2b$", "$2y$"), "bcrypt"),  # htpasswd -B
        ("alice:" + apr_md5_crypt.hash("pw"), "apr_md5_crypt"),  # htpasswd -m
        ("alice:" + sha512_crypt.using(rounds=5000).hash("pw"), "sha512_crypt"),
    ],
)
def test_every_listed_scheme_is_read_and_checked(tmp_path: Path, line: str, scheme: str) -> None:
    login, hashed = parse_line(line)  # type: ignore[misc]
    assert login == "alice" and not hashed.startswith("{")
    path = tmp_path / "passwd"
    path.write_text(line + "\n")
    backend = PasswdFile(path)
    assert backend.check("alice", "pw") is AuthOutcome.OK
    assert backend.check("alice", "PW") is AuthOutcome.FAIL
    assert backend.check("bob", "pw") is AuthOutcome.FAIL
    assert asyncio.run(backend.verify("alice", "pw", AuthClient("192.0.2.1", "127.0.0.1", True))) is AuthOutcome.OK


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("alice:{PLAIN}secret", "scheme {PLAIN} is not one of"),
        ("alice:secret", "plain text is refused"),
        ("alice", "not login:hash"),
        (":{BLF-CRYPT}" + FAST_BCRYPT.hash("pw"), "not login:hash"),
        ("alice:{SHA512-CRYPT}" + FAST_BCRYPT.hash("pw"), "is not a SHA512-CRYPT hash"),
    ],
)
def test_a_bad_line_is_a_config_error_naming_the_key_and_line(tmp_path: Path, line: str, complaint: str) -> None:
    path = tmp_path / "passwd"
    path.write_text("# users\n\n" + line + "\n")
    with pytest.raises(ConfigError) as raised:
        PasswdFile(path)
    assert "auth.passwd_file" in str(raised.value) and "line 3" in str(raised.value)
    assert complaint in str(raised.value)


def test_the_file_is_read_again_when_it_changes_and_a_bad_edit_keeps_the_old_users(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("alice:" + FAST_BCRYPT.hash("one") + "\n")
    backend = PasswdFile(path)
    assert backend.check("alice", "one") is AuthOutcome.OK
    path.write_text("alice:" + FAST_BCRYPT.hash("two") + "\nbob:" + FAST_BCRYPT.hash("b") + "\n")
    os.utime(path, ns=(1, 1))  # a different time even within the file system's time granularity
    assert backend.check("alice", "two") is AuthOutcome.OK and backend.check("bob", "b") is AuthOutcome.OK
    path.write_text("broken line\n")
    os.utime(path, ns=(2, 2))
    assert backend.check("alice", "two") is AuthOutcome.OK  # kept
    path.unlink()
    assert backend.check("bob", "b") is AuthOutcome.OK  # kept


def test_auth_settings_need_a_back_end_when_a_listener_offers_auth(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        AuthSettings.from_config(config_with(tmp_path, {}))
    assert "listener.submission.auth" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        AuthSettings.from_config(config_with(tmp_path, {"backend": "sql"}))
    assert "auth.backend" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        AuthSettings.from_config(config_with(tmp_path, {"backend": "passwd_file"}))
    assert "auth.passwd_file" in str(raised.value)
    assert AuthSettings.from_config(config_with(tmp_path, {}, listener_auth="off")) is None
    settings = AuthSettings.from_config(config_with(tmp_path, {"backend": "passwd_file", "passwd_file": "users"}))
    assert settings is not None and settings.passwd_file == tmp_path / "users" and settings.tls_only
    (tmp_path / "users").mkdir()
    with pytest.raises(ConfigError) as raised:
        build_authenticator(settings)  # a folder, not a readable file (a missing one is an empty one: below)
    assert "auth.passwd_file" in str(raised.value)


@pytest.mark.parametrize(
    ("auth", "key"),
    [
        ({"backend": "dovecot"}, "auth.smtpd_sasl_path"),
        ({"backend": "dovecot", "smtpd_sasl_path": "inet:127.0.0.1"}, "auth.smtpd_sasl_path"),
        ({"backend": "dovecot", "smtpd_sasl_path": "inet:127.0.0.1:99999"}, "auth.smtpd_sasl_path"),
        ({"backend": "dovecot", "smtpd_sasl_path": "/run/dovecot/auth-client", "timeout": "soon"}, "auth.timeout"),
        ({"backend": "passwd_file", "passwd_file": "p", "colour": "blue"}, "auth.colour"),
        ({"backend": "passwd_file", "passwd_file": "p", "session_failure_limit": 0}, "auth.session_failure_limit"),
        ({"backend": "passwd_file", "passwd_file": "p", "failure_limit": True}, "auth.failure_limit"),
        ({"backend": "passwd_file", "passwd_file": "p", "failure_limit": 2.5}, "auth.failure_limit"),
    ],
)
def test_dovecot_settings_are_checked(tmp_path: Path, auth: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        AuthSettings.from_config(config_with(tmp_path, auth))
    assert key in str(raised.value)


def test_dovecot_settings(tmp_path: Path) -> None:
    settings = AuthSettings.from_config(
        config_with(tmp_path, {"backend": "dovecot", "smtpd_sasl_path": "inet:[::1]:12345", "timeout": "3s"})
    )
    assert settings is not None and settings.sasl_path == "inet:[::1]:12345" and settings.timeout == 3.0


def test_a_listener_auth_value_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        config_with(tmp_path, {}, listener_auth="yes")
    assert "listener[0].auth" in str(raised.value) and "off, optional, required" in str(raised.value)


def test_the_ehlo_line_names_exactly_the_mechanisms_run() -> None:
    from gateway import reply as replies
    from gateway.smtpd.sasl import MECHANISMS

    assert replies.EHLO_AUTH.split()[1:] == list(MECHANISMS)


def test_set_password_replaces_a_line_keeping_dovecot_fields_and_adds_new_users(tmp_path: Path) -> None:
    from gateway.auth.passwd_file import hash_password, set_password

    path = tmp_path / "passwd"
    path.write_text(
        "# users\nalice:{SHA512-CRYPT}"
        + sha512_crypt.using(rounds=5000).hash("old")
        + ":1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n"
    )
    assert set_password(path, "alice", hash_password("new", "bcrypt")) is True
    assert set_password(path, "bob@example.com", hash_password("bob", "argon2id")) is False
    lines = path.read_text().splitlines()
    assert lines[0] == "# users" and lines[1].endswith(":1000:1000::/home/alice::userdb_quota_rule=*:storage=1G")
    assert lines[1].startswith("alice:{BLF-CRYPT}$2y$12$") and lines[2].startswith("bob@example.com:{ARGON2ID}")
    backend = PasswdFile(path)
    assert backend.check("alice", "new") is AuthOutcome.OK and backend.check("alice", "old") is AuthOutcome.FAIL
    assert backend.check("bob@example.com", "bob") is AuthOutcome.OK
    with pytest.raises(ValueError):
        set_password(path, "bad:login", "x")
    fresh = tmp_path / "new-passwd"
    set_password(fresh, "carol", hash_password("c"))
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_a_file_not_made_yet_lets_nobody_in_until_it_is_made(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "passwd"
    backend = PasswdFile(path)  # a new deployment: the gateway starts before its first `gateway passwd`
    assert "does not exist: no user can log in" in caplog.text
    assert backend.check("alice", "one") is AuthOutcome.FAIL
    set_password(path, "alice", "{BLF-CRYPT}" + FAST_BCRYPT.hash("one"))
    assert backend.check("alice", "one") is AuthOutcome.OK
    assert backend.check("alice", "two") is AuthOutcome.FAIL


def test_a_password_file_that_exists_but_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        PasswdFile(tmp_path)  # a folder: IsADirectoryError, not a file still to be made
    assert raised.value.key == "auth.passwd_file"


def test_check_from_header_needs_the_sender_login_table(tmp_path: Path) -> None:
    auth = {"backend": "passwd_file", "passwd_file": "users", "check_from_header": True}
    with pytest.raises(ConfigError) as raised:
        AuthSettings.from_config(config_with(tmp_path, auth))
    assert raised.value.key == "auth.check_from_header" and "smtpd_sender_login_maps" in str(raised.value)
    settings = AuthSettings.from_config(config_with(tmp_path, {**auth, "smtpd_sender_login_maps": "owners"}))
    assert settings is not None and settings.check_from_header
    assert settings.sender_login_maps == tmp_path / "owners"
