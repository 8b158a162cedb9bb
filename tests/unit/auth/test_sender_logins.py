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
    logins = table(tmp_path, "info@example.com  alice\ninfo  bob  # any domain\n@example.com\tcarol,dave\n"
                             "\n# comment\nOther@Example.NET Eve\n")
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
