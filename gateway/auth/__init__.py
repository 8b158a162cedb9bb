"""SMTP AUTH back ends: who may log in (RFC 4954), checked against a password store.

A back end answers one question, "is this password right for this login?",
with an :class:`AuthOutcome`; the SMTP side (:mod:`gateway.smtpd.sasl`) runs
the mechanisms (PLAIN, LOGIN) and decides what a login grants.

Configuration (``[auth]``; a listener offers AUTH with ``auth = "optional"``
or ``"required"``)::

    backend = "passwd_file"            # or "dovecot", "ldap"
    passwd_file = "/etc/gateway/passwd" # passwd_file: Dovecot passwd-file or htpasswd lines
    smtpd_sasl_path = "/run/dovecot/auth-client"  # dovecot: its auth-client socket, or "inet:host:port"
    timeout = "10s"                     # dovecot: the longest a check may take (then 454 4.7.0)
    ldap_url = "ldap://127.0.0.1:389"   # ldap: the server (gateway.auth.ldap), and how to find and check users:
    ldap_search_base = "ou=people,dc=example,dc=org"
    ldap_filter = "(mail=%s)"           # %s login, %u its local part, %d its domain (escaped)
    ldap_bind_dn = ""                   # the search's account ("": anonymous) and its ldap_bind_password
    ldap_group_filter = "(memberOf=cn=mail-senders,ou=groups,dc=example,dc=org)"  # optional
    failure_limit = 10                  # failed logins per client address and per login within ...
    failure_window = "60s"              # ... this time; past it AUTH gets 454 4.7.0 (gateway.auth.throttle)
    session_failure_limit = 3           # failed logins in one session before it is closed (421 4.7.0)
    smtpd_tls_auth_only = true          # AUTH offered and taken only inside TLS (Postfix's name)
    smtpd_sender_login_maps = "/etc/gateway/sender_logins"  # who may send as whom (gateway.auth.sender_logins)
    check_from_header = false           # hold the From: addresses to that table too (maddy's authorize_sender)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.cluster import ClusterSettings
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.pipeline.section import Section

BACKENDS = ("passwd_file", "dovecot", "ldap")
LDAP_KEYS = ("ldap_url", "ldap_search_base", "ldap_filter", "ldap_bind_dn", "ldap_bind_password", "ldap_group_filter")


class AuthOutcome(enum.Enum):
    """A back end's answer: the password is right, wrong (or the login unknown), or it cannot tell now."""

    OK = "ok"
    FAIL = "fail"  # 535 5.7.8
    TEMPFAIL = "tempfail"  # 454 4.7.0: the password store is down or slow


@dataclass(frozen=True, slots=True)
class AuthClient:
    """Who is logging in, for back ends that want to know (Dovecot's ``rip``, ``lip``, ``secured``)."""

    remote_ip: str
    local_ip: str
    secured: bool  # the session is encrypted


class Authenticator(Protocol):
    """A password check. ``verify`` never blocks the event loop and never raises for a bad password."""

    async def verify(self, login: str, password: str, client: AuthClient) -> AuthOutcome: ...


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The ``[auth]`` table, validated: which back end, its password file, and whether AUTH needs TLS."""

    backend: str
    passwd_file: Path | None
    tls_only: bool
    sender_login_maps: Path | None = None
    sasl_path: str | None = None  # dovecot: socket path or inet:host:port
    timeout: float = 10.0  # dovecot: seconds
    ldap: dict[str, str] | None = None  # ldap: LDAP_KEYS that are set
    failure_limit: int = 10  # per client key and per login within failure_window; 0: off
    failure_window: float = 60.0  # seconds
    session_failure_limit: int = 3
    check_from_header: bool = False  # hold From: to smtpd_sender_login_maps too
    cluster: ClusterSettings = ClusterSettings()  # where failed logins are counted ([cluster])

    @classmethod
    def from_config(cls, config: Config) -> AuthSettings | None:
        """``[auth]`` of ``config``; None when no listener offers AUTH.

        Raises:
            ConfigError: naming ``auth.<key>`` (or ``listener.<name>.auth`` when a
                listener offers AUTH and ``[auth]`` names no back end), the value and what is allowed.
        """
        section = Section(
            "auth",
            config.section("auth"),
            {
                "backend",
                "passwd_file",
                "smtpd_tls_auth_only",
                "smtpd_sender_login_maps",
                "smtpd_sasl_path",
                "timeout",
                "failure_limit",
                "failure_window",
                "session_failure_limit",
                "check_from_header",
                *LDAP_KEYS,
            },
        )
        offering = [listener for listener in config.listeners if listener.auth != "off"]
        if not offering:
            return None
        backend = section.text("backend")
        if backend is None:
            listener = offering[0]
            raise ConfigError(
                f"listener.{listener.name}.auth",
                listener.auth,
                f"a back end in [auth] backend ({', '.join(BACKENDS)}) to check the passwords",
            )
        if backend not in BACKENDS:
            raise ConfigError(section.key("backend"), backend, f"one of {', '.join(BACKENDS)}")
        passwd_file = section.text("passwd_file")
        if backend == "passwd_file" and not passwd_file:
            raise ConfigError(section.key("passwd_file"), passwd_file, "the path of the password file")
        sasl_path = section.text("smtpd_sasl_path")
        if backend == "dovecot" and not sasl_path:
            raise ConfigError(
                section.key("smtpd_sasl_path"), sasl_path, "Dovecot's auth-client socket path, or inet:host:port"
            )
        if sasl_path and sasl_path.startswith("inet:"):
            host, colon, port = sasl_path[5:].rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    section.key("smtpd_sasl_path"), sasl_path, "inet:host:port, e.g. inet:127.0.0.1:12345"
                )
        ldap = {key: value for key in LDAP_KEYS if (value := section.text(key))}
        if backend == "ldap":
            for key in ("ldap_url", "ldap_search_base"):
                if key not in ldap:
                    raise ConfigError(section.key(key), None, 'set for backend = "ldap"')
            if not ldap["ldap_url"].startswith(("ldap://", "ldaps://")):
                raise ConfigError(section.key("ldap_url"), ldap["ldap_url"], "ldap://host:port or ldaps://host:port")
            ldap.setdefault("ldap_filter", "(mail=%s)")
        sender_login_maps = section.text("smtpd_sender_login_maps")
        check_from_header = section.flag("check_from_header", False)
        if check_from_header and not sender_login_maps:
            raise ConfigError(
                section.key("check_from_header"),
                True,
                "false, or smtpd_sender_login_maps set: it names who owns which From: address",
            )
        return cls(
            backend,
            _path(config, passwd_file),
            section.flag("smtpd_tls_auth_only", True),
            _path(config, sender_login_maps),
            sasl_path,
            section.duration("timeout", 10.0),
            ldap if backend == "ldap" else None,
            section.whole_number("failure_limit", 10),
            section.duration("failure_window", 60.0),
            section.whole_number("session_failure_limit", 3, least=1),
            check_from_header,
            ClusterSettings.from_config(config),
        )


def passwd_file_path(config: Config) -> Path:
    """``[auth] passwd_file`` of ``config`` as a path (relative: against ``state_dir``).

    Raises:
        ConfigError: naming ``auth.passwd_file`` when it is not set.
    """
    path = _path(config, Section("auth", config.section("auth")).text("passwd_file"))
    if path is None:
        raise ConfigError("auth.passwd_file", None, "the path of the password file")
    return path


def _path(config: Config, text: str | None) -> Path | None:
    """A file named by ``[auth]``: relative paths are taken against ``state_dir``."""
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else config.state_dir / path


def build_authenticator(settings: AuthSettings) -> Authenticator:
    """The back end ``settings`` name, loaded (a password file is read now).

    Raises:
        ConfigError: naming ``auth.passwd_file`` when the file cannot be read or has a bad line.
    """
    if settings.backend == "ldap":
        from gateway.auth.ldap import LdapAuth

        ldap = settings.ldap or {}
        return LdapAuth(
            ldap["ldap_url"],
            ldap["ldap_search_base"],
            ldap["ldap_filter"],
            bind_dn=ldap.get("ldap_bind_dn"),
            bind_password=ldap.get("ldap_bind_password"),
            group_filter=ldap.get("ldap_group_filter"),
            timeout=settings.timeout,
        )
    if settings.backend == "dovecot":
        from gateway.auth.dovecot import DovecotAuth

        assert settings.sasl_path is not None
        return DovecotAuth(settings.sasl_path, settings.timeout)
    from gateway.auth.passwd_file import PasswdFile

    assert settings.passwd_file is not None
    return PasswdFile(settings.passwd_file)
