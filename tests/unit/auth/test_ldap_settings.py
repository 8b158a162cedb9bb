"""gateway.auth: the LDAP back end's settings and its filter escaping (RFC 4515)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as gateway_config
from gateway.auth import AuthSettings, build_authenticator
from gateway.auth.ldap import LdapAuth, user_filter
from gateway.errors import ConfigError


def config_with(tmp_path: Path, auth: dict[str, object]) -> gateway_config.Config:
    return gateway_config.build(
        {
            "state_dir": str(tmp_path),
            "auth": auth,
            "listener": [{"name": "submission", "address": "127.0.0.1:2587", "tls": "starttls", "auth": "required"}],
        }
    )


@pytest.mark.parametrize(
    ("template", "login", "expected"),
    [
        ("(mail=%s)", "ann@example.org", "(mail=ann@example.org)"),
        ("(&(uid=%u)(o=%d))", "ann@example.org", "(&(uid=ann)(o=example.org))"),
        ("(uid=%u)", "ann", "(uid=ann)"),
        ("(mail=%s)", "*", "(mail=\\2a)"),
        ("(mail=%s)", "a)(uid=*", "(mail=a\\29\\28uid=\\2a)"),
        ("(mail=%s)", "back\\slash\x00", "(mail=back\\5cslash\\00)"),
        ("(x=100%%)(mail=%s)", "a", "(x=100%)(mail=a)"),
    ],
)
def test_the_login_is_escaped_into_the_filter(template: str, login: str, expected: str) -> None:
    assert user_filter(template, login) == expected


def test_ldap_settings_and_the_back_end_they_build(tmp_path: Path) -> None:
    settings = AuthSettings.from_config(
        config_with(
            tmp_path,
            {
                "backend": "ldap",
                "ldap_url": "ldaps://ldap.example.org:636",
                "ldap_search_base": "ou=people,dc=x",
                "ldap_bind_dn": "cn=gateway,dc=x",
                "ldap_bind_password": "pw",
                "timeout": "2.5s",
            },
        )
    )
    assert settings is not None and settings.ldap is not None
    assert settings.ldap["ldap_filter"] == "(mail=%s)"  # the default
    backend = build_authenticator(settings)
    assert isinstance(backend, LdapAuth)
    assert (backend.url, backend.bind_dn, backend.group_filter, backend.timeout) == (
        "ldaps://ldap.example.org:636",
        "cn=gateway,dc=x",
        None,
        3,
    )


@pytest.mark.parametrize(
    ("auth", "key"),
    [
        ({"backend": "ldap", "ldap_search_base": "dc=x"}, "auth.ldap_url"),
        ({"backend": "ldap", "ldap_url": "ldap://h:389"}, "auth.ldap_search_base"),
        ({"backend": "ldap", "ldap_url": "http://h", "ldap_search_base": "dc=x"}, "auth.ldap_url"),
    ],
)
def test_ldap_settings_are_checked(tmp_path: Path, auth: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        AuthSettings.from_config(config_with(tmp_path, auth))
    assert key in str(raised.value)
