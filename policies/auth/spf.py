"""SPF (RFC 7208) of the MAIL FROM identity, or of the HELO identity for the null sender.

The evaluation is pyspf's (module ``spf``); only its DNS goes through our
resolver. pyspf is synchronous and calls the module-level function
``spf.DNSLookup`` for every query, so this module installs a dispatcher there
once: in a worker thread running :func:`check_spf` it answers from a
thread-local synchronous copy of our resolver (same nameservers and port);
in any other thread it calls the function it replaced, so other pyspf users
in the process see no change and concurrent checks never share state.

Identity (RFC 7208 §2.4): with a non-null MAIL FROM the domain of the
reverse-path is checked; with the null reverse-path ``<>`` the HELO name is
checked as ``postmaster@<helo>``. A domain that is not a multi-label name
with labels of 1-63 octets (an address literal, a bare host name) yields
``none`` without any lookup (RFC 7208 §4.3).

Results are RFC 7208 §2.6 names; DNS problems become ``temperror``
(RFC 7208 §4.4, §5) and never exceptions. Only a resolver that cannot be
used at all raises :class:`~gateway.errors.ScannerError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import dns.exception
import dns.name
import dns.resolver
import spf  # type: ignore[import-untyped]  # pyspf ships no type information

from gateway.errors import ScannerError

__all__ = ["SPF_RESULTS", "SpfResult", "check_spf", "sync_resolver", "valid_domain"]

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
log = logging.getLogger("gateway.policy.spf")

DEFAULT_TIMEOUT = 20.0  # seconds for the whole evaluation: RFC 7208 §4.6.4 "at least 20 seconds"

SpfIdentity = Literal["mailfrom", "helo"]


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check.

    Attributes:
        result: one of :data:`SPF_RESULTS`.
        domain: the domain that was checked (lower case, no trailing dot); ``""``
            when there was none to check.
        identity: ``"mailfrom"`` (RFC5321.MailFrom) or ``"helo"`` (null sender:
            the HELO name stood in, RFC 7208 §2.4).
        explanation: pyspf's text (the ``exp=`` explanation for ``fail``, the
            error for ``temperror``/``permerror``); for logs and comments only.
    """

    result: str
    domain: str
    identity: SpfIdentity = "mailfrom"
    explanation: str = ""


class _ResolverBroken(Exception):
    """Raised inside the worker thread when the resolver itself fails (not a DNS answer)."""


_local = threading.local()
_install_lock = threading.Lock()
_fallback: Callable[..., Any] | None = None


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list[Any]:
    """Stands in for ``spf.DNSLookup``: our resolver in our threads, the original elsewhere."""
    resolver: dns.resolver.Resolver | None = getattr(_local, "resolver", None)
    if resolver is None:
        assert _fallback is not None
        return _fallback(name, qtype, strict, timeout)  # type: ignore[no-any-return]
    return _lookup(resolver, name, qtype, timeout)


def _install() -> None:
    global _fallback
    with _install_lock:
        if spf.DNSLookup is not _dispatch:
            _fallback = spf.DNSLookup
            spf.DNSLookup = _dispatch


def _lookup(resolver: dns.resolver.Resolver, name: str, qtype: str, timeout: float) -> list[Any]:
    """One query in pyspf's format: ``[((name, qtype), value), ...]``.

    Values as pyspf's own dnspython driver gives them: address text for A/AAAA,
    ``(preference, exchange)`` for MX, target text for PTR, the tuple of
    character-strings (bytes) for TXT. No data (NXDOMAIN, NODATA, a name that
    cannot exist) is ``[]``, which pyspf counts as a void lookup.

    Raises:
        spf.TempError: on a timeout or a server failure.
        _ResolverBroken: on anything that is not a DNS outcome.
    """
    lifetime = max(0.1, min(float(timeout), resolver.lifetime))
    try:
        qname = dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError):
        return []  # a name that cannot exist (label too long, bad escape): no data
    try:
        answer = resolver.resolve(qname, qtype, search=False, lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return []
    except dns.exception.DNSException as error:  # timeout, SERVFAIL/REFUSED from every server
        raise spf.TempError(f"DNS {qtype} {name}: {type(error).__name__}") from None
    except Exception as error:
        _local.broken = f"{type(error).__name__}: {error}"
        raise _ResolverBroken(_local.broken) from error
    result: list[Any] = []
    for rdata in answer:
        if qtype in ("A", "AAAA"):
            result.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            result.append(((name, qtype), (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))))
        elif qtype == "PTR":
            result.append(((name, qtype), rdata.target.to_text(omit_final_dot=True)))
        elif qtype in ("TXT", "SPF"):
            result.append(((name, qtype), list(rdata.strings)))
    return result


def sync_resolver(resolver: dns.resolver.BaseResolver) -> dns.resolver.Resolver:
    """A blocking dnspython resolver asking the same servers as ``resolver`` (no cache, no search list).

    Raises:
        ScannerError: when ``resolver`` is not usable (no nameservers, wrong type).
    """
    try:
        nameservers = list(resolver.nameservers)
        copy = dns.resolver.Resolver(configure=False)
        copy.nameservers = nameservers
        copy.port = resolver.port
        copy.timeout = resolver.timeout
        copy.lifetime = resolver.lifetime
        copy.use_edns(resolver.edns, resolver.ednsflags, resolver.payload)
        copy.retry_servfail = resolver.retry_servfail
    except Exception as error:  # noqa: BLE001  (anything wrong with the object is a broken resolver)
        raise ScannerError(f"DNS resolver unusable: {type(error).__name__}: {error}") from None
    if not nameservers:
        raise ScannerError("DNS resolver has no nameservers")
    return copy


def valid_domain(domain: str) -> bool:
    """True for a multi-label domain whose labels are 1-63 octets (RFC 7208 §4.3), not an IP literal."""
    if not domain or len(domain) > 253 or domain.startswith("["):
        return False
    try:
        ipaddress.ip_address(domain)
        return False
    except ValueError:
        pass
    labels = domain.split(".")
    return len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)


def _domain_of(address: str) -> str:
    _local_part, at, domain = address.rpartition("@")
    return domain.strip().lower().rstrip(".") if at else ""


def _to_ascii(domain: str) -> str | None:
    try:
        return domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return None


def _evaluate(ip: str, sender: str, helo: str, resolver: dns.resolver.Resolver, timeout: float) -> tuple[str, str]:
    _local.resolver = resolver
    _local.broken = None
    try:
        query = spf.query(ip, sender, helo, strict=True, timeout=timeout, querytime=timeout)
        result, _code, explanation = query.check()
    except _ResolverBroken as error:
        raise ScannerError(f"DNS resolver failed during SPF: {error}") from None
    except Exception as error:  # noqa: BLE001  (a pyspf bug on a hostile record must not stop the mail)
        log.warning("pyspf failed for %s: %s: %s", sender or f"HELO {helo}", type(error).__name__, error)
        result, explanation = "permerror", f"SPF evaluation error ({type(error).__name__})"
    finally:
        broken = _local.broken
        _local.resolver = None
    if broken:  # pyspf swallows errors of exp= lookups
        raise ScannerError(f"DNS resolver failed during SPF: {broken}")
    return str(result), str(explanation)


async def check_spf(
    ip: str, mail_from: str, helo: str, resolver: dns.resolver.BaseResolver, timeout: float = DEFAULT_TIMEOUT
) -> SpfResult:
    """Evaluate SPF ``check_host()`` for the MAIL FROM identity (HELO for the null sender).

    Args:
        ip: the SMTP client's address (IPv4 or IPv6 text; IPv4-mapped IPv6 counts as IPv4).
        mail_from: the reverse-path without brackets; ``""`` for ``<>``.
        helo: the HELO/EHLO name the client gave (``""`` when none).
        resolver: our resolver (:func:`gateway.resolver.make_resolver`); its servers are asked.
        timeout: seconds for the whole evaluation; past it the result is ``temperror``.

    Returns:
        An :class:`SpfResult`; DNS failures are ``temperror``, record errors ``permerror``.

    Raises:
        ScannerError: when the resolver itself is unusable.
    """
    helo_name = (helo or "").strip().lower().rstrip(".")
    if mail_from:
        identity: SpfIdentity = "mailfrom"
        domain = _domain_of(mail_from)
    else:
        identity = "helo"
        domain = helo_name
    ascii_domain = _to_ascii(domain)
    if ascii_domain is None or not valid_domain(ascii_domain):
        return SpfResult("none", domain, identity, "no valid domain to check")
    if identity == "mailfrom":
        # pyspf splits at the first "@": a quoted local part holding one becomes "postmaster"
        # (only %{l} macros see the difference). RFC 7208 §4.3: no local part → "postmaster".
        local = mail_from.rpartition("@")[0]
        if not local or "@" in local or not local.isprintable():
            local = "postmaster"
        sender = f"{local}@{ascii_domain}"
    else:
        sender, helo_name = "", ascii_domain
    sync = sync_resolver(resolver)
    _install()
    try:
        address = str(ipaddress.ip_address(ip))
    except ValueError:
        return SpfResult("permerror", ascii_domain, identity, f"bad client address {ip!r}")
    result, explanation = await asyncio.to_thread(_evaluate, address, sender, helo_name or "unknown", sync, timeout)
    if result not in SPF_RESULTS:  # pyspf's legacy names, should it ever return them
        result = {"error": "temperror", "unknown": "permerror"}.get(result, "permerror")
    return SpfResult(result, ascii_domain, identity, explanation)
