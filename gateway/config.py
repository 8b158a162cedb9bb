"""Configuration: one TOML file plus ``GATEWAY_*`` environment overrides.

Keys use Postfix ``main.cf`` names where Postfix has one (postconf(5)):
``myhostname``, ``mynetworks``, ``relay_domains``, ``relayhost``,
``transport_maps``, ``message_size_limit``, ``maximal_queue_lifetime``,
``bounce_queue_lifetime``, ``minimal_backoff_time``, ``maximal_backoff_time``,
``smtp_tls_security_level``, ``relay_clientcerts``. Durations take Postfix
forms (``5d``, ``300s``), sizes ``50M``.

Environment: every top-level key can be set as ``GATEWAY_<KEY>`` (upper case),
e.g. ``GATEWAY_RELAYHOST="[10.0.0.1]:25, [10.0.0.2]:25"``. Lists are comma or
whitespace separated; ``GATEWAY_TRANSPORT_MAPS="example.com=[10.0.0.5]:25"``;
``GATEWAY_SMTP_SASL_PASSWORD_MAPS="[relay]:587=user:secret"``. Listeners are
``[[listener]]`` tables, or ``GATEWAY_LISTEN`` (replacing all of them), a list
of ``name=host:port/tls`` entries with an optional ``/require_tls``, e.g.
``GATEWAY_LISTEN="smtp=0.0.0.0:2525/starttls submission=[::]:2587/starttls/require_tls"``
(:func:`parse_listen`).

:func:`load` validates everything and raises :class:`~gateway.errors.ConfigError`
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from gateway.errors import ConfigError
from gateway.tls.context import normalize_fingerprint
from gateway.units import parse_duration, parse_size

ENV_PREFIX = "GATEWAY_"
LISTEN_ENV = "GATEWAY_LISTEN"
TLS_MODES = ("starttls", "implicit", "none")
SMTP_TLS_LEVELS = ("none", "may", "encrypt", "verify")
LOG_FORMATS = ("text", "json")
SPOOL_SYNC_METHODS = ("fsync", "syncfs")
LOG_LEVELS = ("debug", "info", "warning", "error")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class NextHop:
    """A Postfix-style next-hop destination.

    ``[host]:port`` (``mx_lookup`` False) delivers to that host directly;
    ``host:port`` or ``host`` looks up MX records of ``host`` first.
    ``port`` is None when the default SMTP port applies.
    """

    host: str
    port: int | None
    mx_lookup: bool

    def __str__(self) -> str:
        host = self.host if self.mx_lookup else f"[{self.host}]"
        return f"{host}:{self.port}" if self.port else host


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One SMTP listener: ``address:port`` with a TLS mode.

    tls: ``starttls`` (offer STARTTLS), ``implicit`` (TLS from the first byte,
    port 465 style) or ``none``. require_tls: refuse mail commands before TLS.
    """

    name: str
    host: str
    port: int
    tls: str = "starttls"
    require_tls: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; times in seconds, sizes in bytes."""

    myhostname: str = "localhost"
    state_dir: Path = Path("./var")
    spool_dir: Path = Path("./var/spool")
    listeners: tuple[ListenerConfig, ...] = ()
    mynetworks: tuple[Network, ...] = ()
    auto_trust_networks: bool = False
    relay_domains: tuple[str, ...] = ()
    relay_clientcerts: frozenset[str] = frozenset()
    relayhost: tuple[NextHop, ...] = ()
    transport_maps: Mapping[str, tuple[NextHop, ...]] = field(default_factory=dict)
    smtp_sasl_password_maps: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    message_size_limit: int = 10240000
    smtpd_data_memory_limit: int = 128 * 1024 * 1024
    queue_minfree: int = 0
    smtpd_recipient_limit: int = 1000
    hopcount_limit: int = 50
    smtpd_client_connection_count_limit: int = 50
    smtpd_connection_limit: int = 500
    smtpd_timeout: float = 300.0
    smtpd_data_timeout: float = 600.0
    smtpd_starttls_timeout: float = 10.0
    smtpd_tls_cert_file: Path | None = None
    smtpd_tls_key_file: Path | None = None
    smtpd_tls_CAfile: Path | None = None
    maximal_queue_lifetime: float = 5 * 86400.0
    bounce_queue_lifetime: float = 5 * 86400.0
    minimal_backoff_time: float = 300.0
    maximal_backoff_time: float = 4000.0
    queue_run_delay: float = 300.0
    smtp_tls_security_level: str = "may"
    smtp_tls_CAfile: Path | None = None
    smtp_tls_cert_file: Path | None = None
    smtp_tls_key_file: Path | None = None
    smtp_connect_timeout: float = 30.0
    smtp_timeout: float = 300.0
    smtp_connection_cache_time_limit: float = 2.0
    smtp_default_port: int = 25
    default_destination_concurrency_limit: int = 20
    delivery_concurrency_limit: int = 100
    dns_nameservers: tuple[tuple[str, int], ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    spool_sync_method: str = "fsync"
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        """The raw TOML table ``[name]`` of a policy (empty when absent); the policy validates it."""
        return self.sections.get(name, {})

    @property
    def tls_dir(self) -> Path:
        """Where the generated local CA and server certificate live."""
        return self.state_dir / "tls"


# ---- value parsers: each takes (key, raw) and raises ConfigError ----

def _wrap(key: str, raw: object, parse: Callable[[Any], Any], allowed: str) -> Any:
    try:
        return parse(raw)
    except (ValueError, TypeError) as error:
        raise ConfigError(key, raw, f"{allowed} ({error})") from None


def _as_list(key: str, raw: object) -> list[Any]:
    if isinstance(raw, str):
        return [part for part in raw.replace(",", " ").split() if part]
    if isinstance(raw, (list, tuple)):
        return list(raw)
    raise ConfigError(key, raw, "a list (or a comma-separated string)")


def parse_network(text: str) -> Network:
    """``"10.0.0.0/8"``, ``"[::1]/128"`` (Postfix bracket form) or a host address."""
    text = text.strip()
    if text.startswith("["):
        host, _, prefix = text[1:].partition("]")
        text = host + prefix
    return ipaddress.ip_network(text, strict=False)


def parse_next_hop(text: str) -> NextHop:
    """Parse ``[host]:port``, ``host:port``, ``host`` or ``[::1]:25``; an ``smtp:`` prefix is allowed.

    Raises:
        ValueError: on an empty host or a port outside 1-65535.
    """
    text = text.strip()
    if text.lower().startswith(("smtp:", "relay:")):
        text = text.split(":", 1)[1]
    port: int | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        mx_lookup = False
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected ':port' after ']' in {text!r}")
            port = int(rest[1:])
    else:
        mx_lookup = True
        host, sep, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
        if sep:
            port = int(port_text)
    if not host:
        raise ValueError("empty host")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} outside 1-65535")
    return NextHop(host.lower().rstrip("."), port, mx_lookup)


def _parse_hops(key: str, raw: object) -> tuple[NextHop, ...]:
    items = _as_list(key, raw)
    return tuple(_wrap(key, item, parse_next_hop, "[host]:port, host:port or host") for item in items)


def _parse_domain(text: str) -> str:
    domain = str(text).strip().lower().rstrip(".")
    if not domain or " " in domain or "@" in domain:
        raise ValueError("not a domain name")
    return domain


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _parse_positive_int(raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError("not an integer")
    value = int(str(raw))
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in options:
            raise ValueError("not one of the allowed values")
        return value
    return parse


def _parse_map(key: str, raw: object) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return {str(k): v if isinstance(v, list) else str(v) for k, v in raw.items()}
    if isinstance(raw, str):
        result = {}
        for item in _as_list(key, raw):
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(key, raw, "entries of the form name=value")
            result[name] = value
        return result
    raise ConfigError(key, raw, "a table of name = value")


def _parse_nameserver(text: str) -> tuple[str, int]:
    text = str(text).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, 53
    ipaddress.ip_address(host)
    return host, port


def _parse_listener(index: int, raw: object) -> ListenerConfig:
    prefix = f"listener[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, raw, "a table with address and tls")
    unknown = set(raw) - {"name", "address", "tls", "require_tls"}
    if unknown:
        raise ConfigError(f"{prefix}.{sorted(unknown)[0]}", raw[sorted(unknown)[0]],
                          "known listener keys: name, address, tls, require_tls")
    address = raw.get("address")
    if not isinstance(address, str):
        raise ConfigError(f"{prefix}.address", address, "host:port, e.g. 0.0.0.0:25 or [::]:25")
    hop = _wrap(f"{prefix}.address", address, parse_next_hop, "host:port, e.g. 0.0.0.0:25 or [::]:25")
    if hop.port is None:
        raise ConfigError(f"{prefix}.address", address, "host:port with an explicit port")
    tls = _wrap(f"{prefix}.tls", raw.get("tls", "starttls"), _choice(TLS_MODES), "one of " + ", ".join(TLS_MODES))
    require_tls = _wrap(f"{prefix}.require_tls", raw.get("require_tls", False), _parse_bool, "true or false")
    name = str(raw.get("name", f"listener{index}"))
    return ListenerConfig(name=name, host=hop.host, port=hop.port, tls=tls, require_tls=require_tls)


def parse_listen(text: str, key: str = LISTEN_ENV) -> list[dict[str, Any]]:
    """Parse a ``GATEWAY_LISTEN`` list into ``[[listener]]`` tables.

    Entries are separated by commas or whitespace; each is
    ``name=host:port/tls`` (tls: ``starttls``, ``implicit`` or ``none``) with an
    optional ``/require_tls``: ``smtps=0.0.0.0:465/implicit``,
    ``submission=[::]:587/starttls/require_tls``. The tables are then validated
    like TOML ones (:func:`build`).

    Args:
        text: the list.
        key: the name used in errors (the variable, or a command-line option).

    Returns:
        ``{"name", "address", "tls", "require_tls"}`` dicts, in order.

    Raises:
        ConfigError: an entry of another shape, a repeated name or an empty list.
    """
    tables: list[dict[str, Any]] = []
    for entry in _as_list(key, text):
        name, sep, rest = entry.partition("=")
        parts = rest.split("/")
        if not sep or not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "require_tls"):
            raise ConfigError(key, entry, "name=host:port/tls with tls starttls, implicit or none, "
                                          "optionally /require_tls, e.g. smtp=0.0.0.0:25/starttls")
        table = {"name": name, "address": parts[0], "tls": parts[1], "require_tls": len(parts) == 3}
        try:
            _parse_listener(len(tables), table)
        except ConfigError as error:
            raise ConfigError(key, entry, error.allowed) from None
        tables.append(table)
    names = [table["name"] for table in tables]
    if len(names) != len(set(names)):
        raise ConfigError(key, text, "unique listener names")
    if not tables:
        raise ConfigError(key, text, "at least one name=host:port/tls entry")
    return tables


_DURATION_KEYS = (
    "smtpd_timeout", "smtpd_data_timeout", "smtpd_starttls_timeout", "maximal_queue_lifetime", "bounce_queue_lifetime",
    "minimal_backoff_time", "maximal_backoff_time", "queue_run_delay", "smtp_connect_timeout",
    "smtp_timeout", "smtp_connection_cache_time_limit",
)
_INT_KEYS = (
    "smtpd_recipient_limit", "hopcount_limit", "smtpd_client_connection_count_limit", "smtpd_connection_limit",
    "default_destination_concurrency_limit", "delivery_concurrency_limit", "smtp_default_port",
)
_PATH_KEYS = (
    "state_dir", "spool_dir", "smtpd_tls_cert_file", "smtpd_tls_key_file", "smtpd_tls_CAfile",
    "smtp_tls_CAfile", "smtp_tls_cert_file", "smtp_tls_key_file",
)
# Tables owned by policies and the pipeline: validated by their modules (gateway.pipeline.section helpers).
SECTION_KEYS = frozenset({"pipeline", "content_filter", "antivirus", "spamassassin", "rspamd",
                          "spam_levels", "header_checks", "dkim", "sender_auth"})
KNOWN_KEYS = (frozenset(f.name for f in fields(Config)) - {"listeners", "sections"}) | {"listener"} | SECTION_KEYS


def _env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    by_upper = {key.upper(): key for key in KNOWN_KEYS if key != "listener" and key not in SECTION_KEYS}
    result: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX):] in by_upper:
            result[by_upper[name[len(ENV_PREFIX):]]] = value
    return result


def build(raw: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a mapping of raw values (TOML + env merged) into a :class:`Config`.

    Relative paths are resolved against ``base_dir`` (the config file's folder)
    or the working directory.

    Raises:
        ConfigError: naming the first bad key, its value and what is allowed.
    """
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(unknown[0], raw[unknown[0]], "not a known key; see README 'Configuration'")
    values: dict[str, Any] = {}
    base = base_dir or Path.cwd()
    for key in _DURATION_KEYS:
        if key in raw:
            values[key] = _wrap(key, raw[key], parse_duration, "a duration such as 300s, 10m, 5d")
    for key in _INT_KEYS:
        if key in raw:
            values[key] = _wrap(key, raw[key], _parse_positive_int, "a whole number >= 1")
    for key in _PATH_KEYS:
        if key in raw and raw[key] not in (None, ""):
            path = Path(str(raw[key])).expanduser()
            values[key] = path if path.is_absolute() else base / path
    if "spool_dir" not in values:
        values["spool_dir"] = values.get("state_dir", base / "var") / "spool"
    values.setdefault("state_dir", base / "var")
    if "myhostname" in raw:
        values["myhostname"] = _wrap("myhostname", raw["myhostname"], _parse_domain, "a host name")
    for key in ("message_size_limit", "smtpd_data_memory_limit", "queue_minfree"):
        if key in raw:
            values[key] = _wrap(key, raw[key], parse_size, "a size in bytes such as 10240000 or 50M")
    if "mynetworks" in raw:
        values["mynetworks"] = tuple(
            _wrap("mynetworks", item, parse_network, "CIDR networks such as 127.0.0.0/8 or [::1]/128")
            for item in _as_list("mynetworks", raw["mynetworks"]))
    if "auto_trust_networks" in raw:
        values["auto_trust_networks"] = _wrap("auto_trust_networks", raw["auto_trust_networks"],
                                              _parse_bool, "true or false")
    if "relay_domains" in raw:
        values["relay_domains"] = tuple(
            _wrap("relay_domains", item, _parse_domain, "domain names (.example.com for subdomains)")
            for item in _as_list("relay_domains", raw["relay_domains"]))
    if "relay_clientcerts" in raw:
        values["relay_clientcerts"] = frozenset(_relay_clientcerts(raw["relay_clientcerts"]))
    if "relayhost" in raw:
        values["relayhost"] = _parse_hops("relayhost", raw["relayhost"])
    if "transport_maps" in raw:
        values["transport_maps"] = {
            _wrap("transport_maps", domain, _parse_domain, "domain = next hop"):
                _parse_hops(f"transport_maps.{domain}", hops)
            for domain, hops in _parse_map("transport_maps", raw["transport_maps"]).items()}
    if "smtp_sasl_password_maps" in raw:
        values["smtp_sasl_password_maps"] = _sasl_maps(raw["smtp_sasl_password_maps"])
    if "smtp_tls_security_level" in raw:
        values["smtp_tls_security_level"] = _wrap(
            "smtp_tls_security_level", raw["smtp_tls_security_level"], _choice(SMTP_TLS_LEVELS),
            "one of " + ", ".join(SMTP_TLS_LEVELS))
    if "dns_nameservers" in raw:
        values["dns_nameservers"] = tuple(
            _wrap("dns_nameservers", item, _parse_nameserver, "IP addresses, optionally ip:port or [ip]:port")
            for item in _as_list("dns_nameservers", raw["dns_nameservers"]))
    if "log_level" in raw:
        values["log_level"] = _wrap("log_level", raw["log_level"], _choice(LOG_LEVELS), "one of " + ", ".join(LOG_LEVELS))
    if "metrics_listen" in raw:
        values["metrics_listen"] = _parse_metrics_listen(raw["metrics_listen"])
    if "log_format" in raw:
        values["log_format"] = _wrap("log_format", raw["log_format"], _choice(LOG_FORMATS), "text or json")
    if "spool_sync_method" in raw:
        values["spool_sync_method"] = _wrap("spool_sync_method", raw["spool_sync_method"],
                                            _choice(SPOOL_SYNC_METHODS), "fsync or syncfs")
    listeners = raw.get("listener", [])
    if not isinstance(listeners, list):
        raise ConfigError("listener", listeners, "an array of tables [[listener]]")
    values["listeners"] = tuple(_parse_listener(i, item) for i, item in enumerate(listeners))
    sections = {}
    for name in SECTION_KEYS:
        if name in raw:
            if not isinstance(raw[name], Mapping):
                raise ConfigError(name, raw[name], f"a table [{name}]")
            sections[name] = dict(raw[name])
    values["sections"] = sections
    config = Config(**values)
    _check_consistency(config)
    return config


def _parse_metrics_listen(raw: object) -> tuple[str, int] | None:
    if raw in ("", None, False):
        return None
    text = str(raw).strip()
    host, sep, port = text[1:].partition("]:") if text.startswith("[") else text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError("metrics_listen", raw, 'host:port such as 127.0.0.1:9464 (port 0: any), or "" for off')
    return host, int(port)


def _relay_clientcerts(raw: object) -> list[str]:
    items = raw if isinstance(raw, list) else [line for line in str(raw).replace(",", "\n").splitlines()]
    result = []
    for item in items:
        if not str(item).strip():
            continue
        result.append(_wrap("relay_clientcerts", item, normalize_fingerprint,
                            "SHA-256 or SHA-1 fingerprints, colon-separated hex, optional trailing comment"))
    return result


def _sasl_maps(raw: object) -> dict[str, tuple[str, str]]:
    result = {}
    for hop, credentials in _parse_map("smtp_sasl_password_maps", raw).items():
        user, sep, password = str(credentials).partition(":")
        if not sep or not user:
            raise ConfigError(f"smtp_sasl_password_maps.{hop}", "***", "user:password")
        next_hop = _wrap("smtp_sasl_password_maps", hop, parse_next_hop, "next hop as in relayhost")
        result[str(next_hop)] = (user, password)
    return result


def _check_consistency(config: Config) -> None:
    if config.minimal_backoff_time > config.maximal_backoff_time:
        raise ConfigError("minimal_backoff_time", config.minimal_backoff_time,
                          f"at most maximal_backoff_time ({config.maximal_backoff_time:g}s)")
    if bool(config.smtpd_tls_cert_file) != bool(config.smtpd_tls_key_file):
        key = "smtpd_tls_key_file" if config.smtpd_tls_cert_file else "smtpd_tls_cert_file"
        raise ConfigError(key, None, "set both smtpd_tls_cert_file and smtpd_tls_key_file, or neither")
    names = [listener.name for listener in config.listeners]
    if len(names) != len(set(names)):
        raise ConfigError("listener.name", names, "unique listener names")


def read_toml(path: Path | None) -> tuple[dict[str, Any], Path | None]:
    """Read the config file, or the embedded default when ``path`` is None.

    Raises:
        ConfigError: when the file cannot be read or is not valid TOML.
    """
    if path is None:
        text = resources.files("gateway").joinpath("default.toml").read_text()
        return tomllib.loads(text), None
    try:
        return tomllib.loads(path.read_text()), path.parent.resolve()
    except OSError as error:
        raise ConfigError("--config", str(path), f"a readable TOML file ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("--config", str(path), f"valid TOML ({error})") from None


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file (or the embedded default), apply ``GATEWAY_*`` overrides, validate.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    raw, base_dir = read_toml(path)
    environ = os.environ if environ is None else environ
    raw.update(_env_overrides(environ))
    if environ.get(LISTEN_ENV, "").strip():
        raw["listener"] = parse_listen(environ[LISTEN_ENV])
    return build(raw, base_dir)


def describe(config: Config) -> str:
    """The effective configuration as ``key = value`` lines (for ``gateway check-config``)."""
    lines = []
    for item in fields(config):
        value = getattr(config, item.name)
        if item.name == "smtp_sasl_password_maps":
            value = {hop: f"{user}:***" for hop, (user, _) in value.items()}
        elif item.name == "sections":
            for name, table in sorted(value.items()):
                for key, setting in table.items():
                    lines.append(f"{name}.{key} = {setting!r}")
            continue
        elif item.name == "listeners":
            for listener in value:
                lines.append(f"listener = {listener.name} {listener.host}:{listener.port} "
                             f"tls={listener.tls} require_tls={str(listener.require_tls).lower()}")
            continue
        elif item.name == "metrics_listen":
            value = f"{value[0]}:{value[1]}" if value else ""
        elif item.name in ("relayhost",):
            value = ", ".join(str(hop) for hop in value)
        elif item.name == "transport_maps":
            value = {domain: ", ".join(str(h) for h in hops) for domain, hops in value.items()}
        elif isinstance(value, (tuple, frozenset)):
            value = ", ".join(str(v) for v in value)
        lines.append(f"{item.name} = {value}")
    return "\n".join(lines)
