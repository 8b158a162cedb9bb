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

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.tls.context import normalize_fingerprint
from gateway.values import (
    LISTEN_ENV,
    ListenerConfig,
    Network,
    NextHop,
    as_list,
    choice,
    parse_bool,
    parse_count,
    parse_delimiter,
    parse_domain,
    parse_duration,
    parse_hops,
    parse_listen,
    parse_listener,
    parse_map,
    parse_nameserver,
    parse_network,
    parse_next_hop,
    parse_positive_int,
    parse_size,
    wrap,
)

ENV_PREFIX = "GATEWAY_"
SMTP_TLS_LEVELS = ("none", "may", "encrypt", "verify")
LOG_FORMATS = ("text", "json")
SPOOL_SYNC_METHODS = ("fsync", "syncfs")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; times in seconds, sizes in bytes."""

    myhostname: str = "localhost"
    state_dir: Path = Path("./var")
    spool_dir: Path = Path("./var/spool")
    listeners: tuple[ListenerConfig, ...] = ()
    mynetworks: tuple[Network, ...] = ()
    auto_trust_networks: bool = False
    auto_trust_rescan_interval: float = 30.0  # seconds between readings of the interfaces
    relay_domains: tuple[str, ...] = ()
    relay_clientcerts: frozenset[str] = frozenset()
    relayhost: tuple[NextHop, ...] = ()
    transport_maps: Mapping[str, tuple[NextHop, ...]] = field(default_factory=dict)
    smtp_sasl_password_maps: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    message_size_limit: int = 10240000
    smtpd_data_memory_limit: int = 128 * 1024 * 1024
    smtpd_data_spill_size: int = 1024 * 1024
    queue_minfree: int = 0
    smtpd_recipient_limit: int = 1000
    hopcount_limit: int = 50
    smtpd_client_connection_count_limit: int = 50
    smtpd_connection_limit: int = 500
    smtpd_timeout: float = 300.0
    smtpd_data_timeout: float = 600.0
    smtpd_starttls_timeout: float = 10.0
    smtpd_junk_command_limit: int = 100
    upstream_proxy_networks: tuple[Network, ...] = ()  # who may send PROXY headers (listener upstream_proxy_protocol)
    smtpd_upstream_proxy_timeout: float = 5.0
    virtual_alias_maps: tuple[Path, ...] = ()
    relay_recipient_maps: tuple[Path, ...] = ()
    recipient_delimiter: str = "+"
    virtual_alias_recursion_limit: int = 1000
    virtual_alias_expansion_limit: int = 1000
    reject_unverified_recipient: bool = False
    address_verify_sender: str = ""  # "": double-bounce@myhostname
    address_verify_positive_expire_time: float = 31 * 86400.0
    address_verify_negative_expire_time: float = 3 * 86400.0
    address_verify_positive_refresh_time: float = 7 * 86400.0
    address_verify_negative_refresh_time: float = 3 * 3600.0
    address_verify_timeout: float = 10.0
    smtpd_client_connection_rate_limit: int = 0
    smtpd_client_message_rate_limit: int = 0
    smtpd_client_recipient_rate_limit: int = 0
    anvil_rate_time_unit: float = 60.0
    smtpd_client_event_limit_exceptions: tuple[str, ...] = ("mynetworks",)
    smtpd_forbid_unauth_pipelining: bool = True
    smtpd_pregreet_wait: float = 0.0
    strict_8bitmime: bool = False
    smtpd_tls_cert_file: Path | None = None
    smtpd_tls_key_file: Path | None = None
    smtpd_tls_CAfile: Path | None = None
    maximal_queue_lifetime: float = 5 * 86400.0
    bounce_queue_lifetime: float = 5 * 86400.0
    delay_warning_time: float = 0.0  # 0: no delay warnings (Postfix's default)
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
    workers: int = field(default_factory=lambda: cpu_count())  # "auto"
    event_loop: str = "uvloop"
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    metrics_timeout: float = 10.0
    drain_to: NextHop | None = None  # the peer gateway drain hands the queue to (gateway.ops.drain)
    drain_timeout: float = 60.0  # seconds of delivery before the hand-off
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        """The raw TOML table ``[name]`` of a policy (empty when absent); the policy validates it."""
        return self.sections.get(name, {})

    @property
    def tls_dir(self) -> Path:
        """Where the generated local CA and server certificate live."""
        return self.state_dir / "tls"


_DURATION_KEYS = (
    "smtpd_timeout",
    "smtpd_data_timeout",
    "smtpd_starttls_timeout",
    "maximal_queue_lifetime",
    "bounce_queue_lifetime",
    "minimal_backoff_time",
    "maximal_backoff_time",
    "queue_run_delay",
    "smtp_connect_timeout",
    "smtp_timeout",
    "smtp_connection_cache_time_limit",
    "metrics_timeout",
    "smtpd_pregreet_wait",
    "anvil_rate_time_unit",
    "delay_warning_time",
    "smtpd_upstream_proxy_timeout",
    "address_verify_positive_expire_time",
    "address_verify_negative_expire_time",
    "address_verify_positive_refresh_time",
    "address_verify_negative_refresh_time",
    "address_verify_timeout",
    "drain_timeout",
    "auto_trust_rescan_interval",
)
_INT_KEYS = (
    "smtpd_recipient_limit",
    "hopcount_limit",
    "smtpd_client_connection_count_limit",
    "smtpd_connection_limit",
    "default_destination_concurrency_limit",
    "delivery_concurrency_limit",
    "smtp_default_port",
    "virtual_alias_recursion_limit",
    "virtual_alias_expansion_limit",
)
_COUNT_KEYS = (  # 0 turns the limit off
    "smtpd_junk_command_limit",
    "smtpd_client_connection_rate_limit",
    "smtpd_client_message_rate_limit",
    "smtpd_client_recipient_rate_limit",
)
_BOOL_KEYS = ("auto_trust_networks", "smtpd_forbid_unauth_pipelining", "strict_8bitmime", "reject_unverified_recipient")
_PATH_KEYS = (
    "state_dir",
    "spool_dir",
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_CAfile",
    "smtp_tls_CAfile",
    "smtp_tls_cert_file",
    "smtp_tls_key_file",
)
# The top-level keys; any other key whose value is a table is a section ([dkim], [antivirus] ...),
# kept for the module that owns it, and gateway.pipeline.build refuses the tables nobody owns.
KNOWN_KEYS = (frozenset(f.name for f in fields(Config)) - {"listeners", "sections"}) | {"listener"}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    by_upper = {key.upper(): key for key in KNOWN_KEYS if key != "listener"}
    result: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :] in by_upper:
            result[by_upper[name[len(ENV_PREFIX) :]]] = value
    return result


def build(raw: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a mapping of raw values (TOML + env merged) into a :class:`Config`.

    Relative paths are resolved against ``base_dir`` (the config file's folder)
    or the working directory.

    Raises:
        ConfigError: naming the first bad key, its value and what is allowed.
    """
    unknown = sorted(key for key in set(raw) - KNOWN_KEYS if not isinstance(raw[key], Mapping))
    if unknown:
        raise ConfigError(unknown[0], raw[unknown[0]], "not a known key; see README 'Configuration'")
    values: dict[str, Any] = {}
    base = base_dir or Path.cwd()
    for key in _DURATION_KEYS:
        if key in raw:
            values[key] = wrap(key, raw[key], parse_duration, "a duration such as 300s, 10m, 5d")
    for key in _INT_KEYS:
        if key in raw:
            values[key] = wrap(key, raw[key], parse_positive_int, "a whole number >= 1")
    for key in _COUNT_KEYS:
        if key in raw:
            values[key] = wrap(key, raw[key], parse_count, "a whole number >= 0 (0: no limit)")
    if "smtpd_client_event_limit_exceptions" in raw:
        values["smtpd_client_event_limit_exceptions"] = tuple(
            item
            if item == "mynetworks"
            else str(
                wrap(
                    "smtpd_client_event_limit_exceptions",
                    item,
                    parse_network,
                    "mynetworks or CIDR networks such as 192.0.2.0/24",
                )
            )
            for item in as_list("smtpd_client_event_limit_exceptions", raw["smtpd_client_event_limit_exceptions"])
        )
    for key in _PATH_KEYS:
        if key in raw and raw[key] not in (None, ""):
            path = Path(str(raw[key])).expanduser()
            values[key] = path if path.is_absolute() else base / path
    for key in ("virtual_alias_maps", "relay_recipient_maps"):
        if key in raw:
            paths = (Path(str(item)).expanduser() for item in as_list(key, raw[key]) if str(item))
            values[key] = tuple(path if path.is_absolute() else base / path for path in paths)
    if "address_verify_sender" in raw:
        values["address_verify_sender"] = str(raw["address_verify_sender"]).strip()
    if "recipient_delimiter" in raw:
        values["recipient_delimiter"] = wrap(
            "recipient_delimiter",
            raw["recipient_delimiter"],
            parse_delimiter,
            'characters that start an address extension, e.g. "+" ("" for none)',
        )
    if "spool_dir" not in values:
        values["spool_dir"] = values.get("state_dir", base / "var") / "spool"
    values.setdefault("state_dir", base / "var")
    if "myhostname" in raw:
        values["myhostname"] = wrap("myhostname", raw["myhostname"], parse_domain, "a host name")
    for key in ("message_size_limit", "smtpd_data_memory_limit", "smtpd_data_spill_size", "queue_minfree"):
        if key in raw:
            values[key] = wrap(key, raw[key], parse_size, "a size in bytes such as 10240000 or 50M")
    if "mynetworks" in raw:
        values["mynetworks"] = tuple(
            wrap("mynetworks", item, parse_network, "CIDR networks such as 127.0.0.0/8 or [::1]/128")
            for item in as_list("mynetworks", raw["mynetworks"])
        )
    if "upstream_proxy_networks" in raw:
        values["upstream_proxy_networks"] = tuple(
            wrap("upstream_proxy_networks", item, parse_network, "CIDR networks such as 10.0.0.0/8")
            for item in as_list("upstream_proxy_networks", raw["upstream_proxy_networks"])
        )
    for key in _BOOL_KEYS:
        if key in raw:
            values[key] = wrap(key, raw[key], parse_bool, "true or false")
    if "relay_domains" in raw:
        values["relay_domains"] = tuple(
            wrap("relay_domains", item, parse_domain, "domain names (.example.com for subdomains)")
            for item in as_list("relay_domains", raw["relay_domains"])
        )
    if "relay_clientcerts" in raw:
        values["relay_clientcerts"] = frozenset(_relay_clientcerts(raw["relay_clientcerts"]))
    if "relayhost" in raw:
        values["relayhost"] = parse_hops("relayhost", raw["relayhost"])
    if raw.get("drain_to"):
        values["drain_to"] = wrap("drain_to", raw["drain_to"], parse_next_hop, "[host]:port or host:port")
    if "transport_maps" in raw:
        values["transport_maps"] = {
            wrap("transport_maps", domain, parse_domain, "domain = next hop"): parse_hops(
                f"transport_maps.{domain}", hops
            )
            for domain, hops in parse_map("transport_maps", raw["transport_maps"]).items()
        }
    if "smtp_sasl_password_maps" in raw:
        values["smtp_sasl_password_maps"] = _sasl_maps(raw["smtp_sasl_password_maps"])
    if "smtp_tls_security_level" in raw:
        values["smtp_tls_security_level"] = wrap(
            "smtp_tls_security_level",
            raw["smtp_tls_security_level"],
            choice(SMTP_TLS_LEVELS),
            "one of " + ", ".join(SMTP_TLS_LEVELS),
        )
    if "dns_nameservers" in raw:
        values["dns_nameservers"] = tuple(
            wrap("dns_nameservers", item, parse_nameserver, "IP addresses, optionally ip:port or [ip]:port")
            for item in as_list("dns_nameservers", raw["dns_nameservers"])
        )
    if "log_level" in raw:
        values["log_level"] = wrap("log_level", raw["log_level"], choice(LOG_LEVELS), "one of " + ", ".join(LOG_LEVELS))
    if "metrics_listen" in raw:
        values["metrics_listen"] = _parse_metrics_listen(raw["metrics_listen"])
    if "log_format" in raw:
        values["log_format"] = wrap("log_format", raw["log_format"], choice(LOG_FORMATS), "text or json")
    if "spool_sync_method" in raw:
        values["spool_sync_method"] = wrap(
            "spool_sync_method", raw["spool_sync_method"], choice(SPOOL_SYNC_METHODS), "fsync or syncfs"
        )
    if "event_loop" in raw:
        values["event_loop"] = wrap("event_loop", raw["event_loop"], choice(EVENT_LOOPS), "uvloop or asyncio")
    if "workers" in raw:
        values["workers"] = _parse_workers(raw["workers"])
    listeners = raw.get("listener", [])
    if not isinstance(listeners, list):
        raise ConfigError("listener", listeners, "an array of tables [[listener]]")
    values["listeners"] = tuple(parse_listener(i, item) for i, item in enumerate(listeners))
    values["sections"] = {
        name: dict(table) for name, table in raw.items() if name not in KNOWN_KEYS and isinstance(table, Mapping)
    }
    config = Config(**values)
    _check_consistency(config)
    return config


EVENT_LOOPS = ("uvloop", "asyncio")


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, so a cpuset or ``taskset`` counts): ``workers = "auto"``."""
    return max(1, len(os.sched_getaffinity(0)))


def _parse_workers(raw: object) -> int:
    """``"auto"`` (the default: one worker process per CPU, :func:`cpu_count`) or a whole number >= 1."""
    if raw == "auto":
        return cpu_count()
    workers: int = wrap("workers", raw, parse_positive_int, '"auto" or a whole number >= 1')
    return workers


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
        result.append(
            wrap(
                "relay_clientcerts",
                item,
                normalize_fingerprint,
                "SHA-256 or SHA-1 fingerprints, colon-separated hex, optional trailing comment",
            )
        )
    return result


def _sasl_maps(raw: object) -> dict[str, tuple[str, str]]:
    result = {}
    for hop, credentials in parse_map("smtp_sasl_password_maps", raw).items():
        user, sep, password = str(credentials).partition(":")
        if not sep or not user:
            raise ConfigError(f"smtp_sasl_password_maps.{hop}", "***", "user:password")
        next_hop = wrap("smtp_sasl_password_maps", hop, parse_next_hop, "next hop as in relayhost")
        result[str(next_hop)] = (user, password)
    return result


def _check_consistency(config: Config) -> None:
    if config.minimal_backoff_time > config.maximal_backoff_time:
        raise ConfigError(
            "minimal_backoff_time",
            config.minimal_backoff_time,
            f"at most maximal_backoff_time ({config.maximal_backoff_time:g}s)",
        )
    if bool(config.smtpd_tls_cert_file) != bool(config.smtpd_tls_key_file):
        key = "smtpd_tls_key_file" if config.smtpd_tls_cert_file else "smtpd_tls_cert_file"
        raise ConfigError(key, None, "set both smtpd_tls_cert_file and smtpd_tls_key_file, or neither")
    names = [listener.name for listener in config.listeners]
    if len(names) != len(set(names)):
        raise ConfigError("listener.name", names, "unique listener names")
    proxied = [listener.name for listener in config.listeners if listener.upstream_proxy_protocol]
    if proxied and not config.upstream_proxy_networks:
        raise ConfigError(
            "upstream_proxy_networks",
            [],
            f"the balancers' networks: listener {proxied[0]} takes "
            "PROXY headers (upstream_proxy_protocol), and only these may send them",
        )


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
                lines.append(
                    f"listener = {listener.name} {listener.host}:{listener.port} "
                    f"tls={listener.tls} require_tls={str(listener.require_tls).lower()} auth={listener.auth}"
                )
            continue
        elif item.name == "metrics_listen":
            value = f"{value[0]}:{value[1]}" if value else ""
        elif item.name == "drain_to":
            value = str(value) if value is not None else ""
        elif item.name in ("relayhost",):
            value = ", ".join(str(hop) for hop in value)
        elif item.name == "transport_maps":
            value = {domain: ", ".join(str(h) for h in hops) for domain, hops in value.items()}
        elif isinstance(value, (tuple, frozenset)):
            value = ", ".join(str(v) for v in value)
        lines.append(f"{item.name} = {value}")
    return "\n".join(lines)
