"""gateway.auth.sender_logins: smtpd_sender_login_maps lookups (Postfix order and case rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.sender_logins import SenderLogins
from gateway.errors import ConfigError


def table(tmp_path: Path, text: str) -> SenderLogins:
    path = tmp_path / "sender_logins"
    path.write_text(text)
    return SenderLogins(path)


def test_lookup_order_address_then_local_part_then_domain(tmp_path: Path) -> None:
    logins = table(
        tmp_path,
        "info@example.com  alice\ninfo  bob  # any domain\n@example.com\tcarol,dave\n"
        "\n# comment\nOther@Example.NET Eve\n",
    )
    assert logins.lookup("info@example.com") == {"alice"}
    assert logins.lookup("INFO@example.org") == {"bob"}
    assert logins.lookup("someone@EXAMPLE.com") == {"carol", "dave"}
    assert logins.lookup("other@example.net") == {"eve"}
    assert logins.lookup("nobody@example.org") is None
    assert logins.owns("Alice", "info@example.com") and not logins.owns("bob", "info@example.com")
    assert logins.owns("dave", "x@example.com") and not logins.owns("dave", "x@example.org")
    assert logins.owns("anyone", "")  # the null sender is never checked


@pytest.mark.parametrize("text", ["alice@example.com\n", "   \nkey   # only a comment after the key\n"])
def test_a_key_without_logins_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        table(tmp_path, text)
    assert "auth.smtpd_sender_login_maps" in str(raised.value) and "names no login" in str(raised.value)


def test_a_missing_table_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        SenderLogins(tmp_path / "absent")
    assert "auth.smtpd_sender_login_maps" in str(raised.value)


def test_from_header_addresses_are_held_to_the_table(tmp_path: Path) -> None:
    path = tmp_path / "sender_logins"
    path.write_text("alice@example.com  alice\nsales@example.com  alice, bob\n")
    logins = SenderLogins(path, check_from_header=True)

    def author(login: str, head: bytes) -> str | None:
        raw = head + b"\r\nbody From: eve@example.com\r\n"
        return logins.unowned_author(login, raw, raw.index(b"\r\n\r\n") + 4)

    assert author("alice", b"From: Alice <alice@example.com>\r\nSubject: x\r\n") is None
    assert author("alice", b"From: alice@example.com,\r\n Sales <sales@example.com>\r\n") is None  # folded, two
    assert author("bob", b"From: alice@example.com, sales@example.com\r\n") == "alice@example.com"
    assert author("bob", b'Subject: x\r\nFrom: "Boss" <boss@example.com>\r\n') == "boss@example.com"
    assert author("alice", b"Subject: no author\r\n") == ""
    assert author("alice", b"From: undisclosed\r\n") == ""
    assert author("alice", b"From: alice@example.com\r\nFrom: eve@example.com\r\n") == "eve@example.com"
