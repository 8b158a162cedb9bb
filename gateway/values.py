"""The value forms of config keys: Postfix durations and sizes, next hops, networks, listeners, lists.

Each parser takes the raw value (TOML or a ``GATEWAY_*`` string) and returns the
typed value or raises ``ValueError``/:class:`~gateway.errors.ConfigError`
naming the key; :mod:`gateway.config` assembles the whole configuration from them.

Durations follow Postfix ``main.cf`` time units (postconf(5) "time units"):
a number with an optional suffix ``s`` (seconds, the default), ``m`` (minutes),
``h`` (hours), ``d`` (days) or ``w`` (weeks). Sizes are bytes with an optional
``k``, ``M`` or ``G`` suffix (powers of 1024).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[bB]?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: str | int | float) -> float:
    """Return seconds for ``"5d"``, ``"300s"``, ``"10m"``, ``"1.5h"``, ``300`` or ``0.5``.

    Raises:
        ValueError: when the value is negative or not of that form.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a finite, non-negative number of seconds")
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 300s, 10m, 2h, 5d or 1w")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: str | int) -> int:
    """Return bytes for ``10240000``, ``"50M"``, ``"512k"`` or ``"1G"``.

    Raises:
        ValueError: when the value is negative or not of that form.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size such as 10240000, 512k, 50M or 1G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_duration(seconds: float) -> str:
    """Format seconds the short Postfix way (``"5d"``, ``"300s"``) for logs and check-config."""
    for suffix, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{suffix}"
    return f"{seconds:g}s"


LISTEN_ENV = "GATEWAY_LISTEN"
TLS_MODES = ("starttls", "implicit", "none")
AUTH_MODES = ("off", "optional", "required")

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
    auth: SMTP AUTH on this listener (Postfix ``smtpd_sasl_auth_enable``): ``off``,
    ``optional`` (offered; a login lets the client relay) or ``required`` (MAIL
    is refused ``530 5.7.0`` until the client has logged in).
    upstream_proxy_protocol: ``"haproxy"`` (Postfix ``smtpd_upstream_proxy_protocol``): every connection
    starts with a PROXY v1 or v2 header naming the real client; ``""``: none.
    """

    name: str
    host: str
    port: int
    tls: str = "starttls"
    require_tls: bool = False
    auth: str = "off"
    upstream_proxy_protocol: str = ""


def wrap(key: str, raw: object, parse: Callable[[Any], Any], allowed: str) -> Any:
    try:
        return parse(raw)
    except (ValueError, TypeError) as error:
        raise ConfigError(key, raw, f"{allowed} ({error})") from None


def as_list(key: str, raw: object) -> list[Any]:
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


def parse_hops(key: str, raw: object) -> tuple[NextHop, ...]:
    items = as_list(key, raw)
    return tuple(wrap(key, item, parse_next_hop, "[host]:port, host:port or host") for item in items)


def parse_domain(text: str) -> str:
    domain = str(text).strip().lower().rstrip(".")
    if not domain or " " in domain or "@" in domain:
        raise ValueError("not a domain name")
    return domain


def parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _whole_number(raw: object, least: int) -> int:
    if isinstance(raw, bool):
        raise ValueError("not an integer")
    value = int(str(raw))
    if value < least:
        raise ValueError(f"must be at least {least}")
    return value


def parse_positive_int(raw: object) -> int:
    """A whole number >= 1."""
    return _whole_number(raw, 1)


def parse_delimiter(raw: object) -> str:
    """``recipient_delimiter``: a few characters, none of them white space, ``@``, ``<`` or ``>``; "" for none."""
    if not isinstance(raw, str) or len(raw) > 8 or any(c.isspace() or c in '@<>"' for c in raw):
        raise ValueError("not a delimiter")
    return raw


def parse_count(raw: object) -> int:
    """A whole number >= 0 (a limit where 0 means none)."""
    return _whole_number(raw, 0)


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in options:
            raise ValueError("not one of the allowed values")
        return value

    return parse


def parse_map(key: str, raw: object) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return {str(k): v if isinstance(v, list) else str(v) for k, v in raw.items()}
    if isinstance(raw, str):
        result = {}
        for item in as_list(key, raw):
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(key, raw, "entries of the form name=value")
            result[name] = value
        return result
    raise ConfigError(key, raw, "a table of name = value")


def parse_nameserver(text: str) -> tuple[str, int]:
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


def parse_listener(index: int, raw: object) -> ListenerConfig:
    prefix = f"listener[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, raw, "a table with address and tls")
    unknown = set(raw) - {"name", "address", "tls", "require_tls", "auth", "upstream_proxy_protocol"}
    if unknown:
        raise ConfigError(
            f"{prefix}.{sorted(unknown)[0]}",
            raw[sorted(unknown)[0]],
            "known listener keys: name, address, tls, require_tls, auth, upstream_proxy_protocol",
        )
    address = raw.get("address")
    if not isinstance(address, str):
        raise ConfigError(f"{prefix}.address", address, "host:port, e.g. 0.0.0.0:25 or [::]:25")
    hop = wrap(f"{prefix}.address", address, parse_next_hop, "host:port, e.g. 0.0.0.0:25 or [::]:25")
    if hop.port is None:
        raise ConfigError(f"{prefix}.address", address, "host:port with an explicit port")
    tls = wrap(f"{prefix}.tls", raw.get("tls", "starttls"), choice(TLS_MODES), "one of " + ", ".join(TLS_MODES))
    require_tls = wrap(f"{prefix}.require_tls", raw.get("require_tls", False), parse_bool, "true or false")
    auth = wrap(f"{prefix}.auth", raw.get("auth", "off"), choice(AUTH_MODES), "one of " + ", ".join(AUTH_MODES))
    proxy = wrap(
        f"{prefix}.upstream_proxy_protocol",
        raw.get("upstream_proxy_protocol", ""),
        choice(("", "haproxy")),
        '"haproxy" (PROXY protocol v1 or v2) or "" (none)',
    )
    name = str(raw.get("name", f"listener{index}"))
    return ListenerConfig(
        name=name,
        host=hop.host,
        port=hop.port,
        tls=tls,
        require_tls=require_tls,
        auth=auth,
        upstream_proxy_protocol=proxy,
    )


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
    for entry in as_list(key, text):
        name, sep, rest = entry.partition("=")
        parts = rest.split("/")
        if not sep or not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "require_tls"):
            raise ConfigError(
                key,
                entry,
                "name=host:port/tls with tls starttls, implicit or none, "
                "optionally /require_tls, e.g. smtp=0.0.0.0:25/starttls",
            )
        table = {"name": name, "address": parts[0], "tls": parts[1], "require_tls": len(parts) == 3}
        try:
            parse_listener(len(tables), table)
        except ConfigError as error:
            raise ConfigError(key, entry, error.allowed) from None
        tables.append(table)
    names = [table["name"] for table in tables]
    if len(names) != len(set(names)):
        raise ConfigError(key, text, "unique listener names")
    if not tables:
        raise ConfigError(key, text, "at least one name=host:port/tls entry")
    return tables
