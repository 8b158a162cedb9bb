"""Check the DNS records that make mail from this gateway deliverable (``gateway dns-check``).

Like the seed mail server's ``dns_check.sh``, for the gateway host
``myhostname``:

- ``A/AAAA``: it has addresses;
- ``PTR <address>``: each address has a PTR naming ``myhostname``
  (forward-confirmed reverse DNS: the address came from ``myhostname``'s own
  A/AAAA records, so a PTR back to it closes the loop);

and for each sending domain:

- ``MX``: the domain has (non-null, RFC 7505) MX records, so bounces and
  replies reach it;
- ``SPF``: exactly one ``v=spf1`` TXT record that gives ``pass`` for every
  gateway address, evaluated with pyspf (RFC 7208);
- ``DKIM <selector> (<algorithm>)``: for each key on disk, the TXT record at
  ``<selector>._domainkey.<domain>`` carries that key's public half
  (RFC 6376 §3.6.1, RFC 8463);
- ``DMARC``: one TXT record at ``_dmarc.<domain>`` starting with ``v=DMARC1``
  (RFC 7489 §6.6.3).

Every lookup goes through :func:`gateway.resolver.make_resolver` (so
``dns_nameservers`` applies). A DNS error (timeout, SERVFAIL) makes that check
fail with the error as detail; it never aborts the run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.resolver
import dns.reversename
import spf  # type: ignore[import-untyped]

from gateway.config import Config
from gateway.dkim import keys as dkim_keys
from gateway.dkim import settings as dkim_settings
from gateway.errors import ConfigError
from gateway.pipeline.section import Section
from gateway.resolver import make_resolver

__all__ = ["CheckResult", "check_domains", "default_domains", "format_report"]

_SPF_RECORD = re.compile(r"v=spf1(?: |$)", re.IGNORECASE)  # RFC 7208 §4.5
_DMARC_RECORD = re.compile(r"[vV]\s*=\s*DMARC1\s*(?:;|$)")  # RFC 7489 §6.4: v must come first
_SPF_EVALUATION_GRACE = 5.0  # seconds a pyspf lookup may wait beyond the resolver's own lifetime


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        domain: the domain checked (``myhostname`` for the host's A/AAAA and PTR checks).
        check: ``"MX"``, ``"A/AAAA"``, ``"PTR 192.0.2.1"``, ``"SPF"``,
            ``"DKIM mail (rsa)"`` or ``"DMARC"``.
        passed: whether the published DNS is right.
        detail: what was found, or what is wrong (one line).
        fix: a zone-file line to publish that would make the check pass, if one is known.
    """

    domain: str
    check: str
    passed: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        """``PASS|FAIL  <domain>  <check>: <detail>``."""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.domain}  {self.check}: {self.detail}"


class _LookupError(Exception):
    """A DNS lookup failed (timeout, SERVFAIL, REFUSED ...): ``str()`` is a one-line detail."""


def default_domains(config: Config) -> tuple[str, ...]:
    """The domains to check when none are given: ``[dkim] domains``, else ``relay_domains``.

    ``relay_domains`` entries of the ``.example.com`` (subdomains only) form are skipped.

    Raises:
        ConfigError: ``dkim.domains`` is not a list of strings.
    """
    configured = Section("dkim", config.section("dkim")).strings("domains")
    if configured:
        return tuple(domain.strip().lower().rstrip(".") for domain in configured)
    return tuple(domain for domain in config.relay_domains if not domain.startswith("."))


async def _resolve(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
    """The rdatas of ``name``/``rdtype`` (CNAMEs followed); ``[]`` for NXDOMAIN or no data.

    Raises:
        _LookupError: timeout, every server failed (SERVFAIL, REFUSED), or a malformed name.
    """
    try:
        answer = await resolver.resolve(dns.name.from_text(name), rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise _LookupError(f"{rdtype} {name}: DNS timeout after {resolver.lifetime:g}s") from None
    except dns.resolver.NoNameservers as error:
        errors = error.kwargs.get("errors") or []
        reasons = "; ".join(f"server {item[0]} answered {item[3]}" for item in errors) or "no server answered"
        raise _LookupError(f"{rdtype} {name}: {reasons}") from None
    except dns.exception.DNSException as error:
        raise _LookupError(f"{rdtype} {name}: {error}") from None
    return list(answer)


def _txt(rdata: dns.rdata.Rdata) -> str:
    """A TXT rdata's character-strings joined without separators (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
    return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]


def _txt_line(owner: str, value: str) -> str:
    strings = dkim_keys.txt_strings(value)
    if len(strings) == 1:
        return f'{owner}. IN TXT "{value}"'
    return f"{owner}. IN TXT ( " + " ".join(f'"{part}"' for part in strings) + " )"


# ---- the gateway host ----


async def _check_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[CheckResult, list[str]]:
    """The A/AAAA check of ``host``; returns it with the addresses found (text form)."""
    answers = await asyncio.gather(
        _resolve(resolver, host, "A"), _resolve(resolver, host, "AAAA"), return_exceptions=True
    )
    addresses: list[str] = []
    errors: list[str] = []
    for answer in answers:
        if isinstance(answer, _LookupError):
            errors.append(str(answer))
        elif isinstance(answer, BaseException):
            raise answer
        else:
            addresses.extend(rdata.address for rdata in answer)  # type: ignore[attr-defined]
    fix = f"{host}. IN A <public IPv4 address of this gateway>"
    if errors:
        found = f" (found {', '.join(addresses)})" if addresses else ""
        return CheckResult(host, "A/AAAA", False, "; ".join(errors) + found, None), addresses
    if not addresses:
        return CheckResult(host, "A/AAAA", False, f"{host} has no A or AAAA record", fix), addresses
    return CheckResult(host, "A/AAAA", True, ", ".join(addresses)), addresses


async def _check_ptr(resolver: dns.asyncresolver.Resolver, host: str, address: str) -> CheckResult:
    """Forward-confirmed reverse DNS of one of ``host``'s addresses (RFC 8601 §3 "iprev")."""
    reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
    check = f"PTR {address}"
    fix = f"{reverse}. IN PTR {host}.  ; set by whoever owns {address} (hosting provider)"
    try:
        targets = [
            rdata.target.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
            for rdata in await _resolve(resolver, reverse, "PTR")
        ]
    except _LookupError as error:
        return CheckResult(host, check, False, str(error))
    if not targets:
        return CheckResult(host, check, False, f"no PTR record at {reverse}", fix)
    if host not in targets:
        return CheckResult(host, check, False, f"PTR points to {', '.join(targets)}, not {host}", fix)
    return CheckResult(host, check, True, f"{reverse} -> {host} -> {address} (forward-confirmed)")


# ---- per domain ----


async def _check_mx(resolver: dns.asyncresolver.Resolver, domain: str, host: str) -> CheckResult:
    fix = f"{domain}. IN MX 10 {host}."
    try:
        rdatas = await _resolve(resolver, domain, "MX")
    except _LookupError as error:
        return CheckResult(domain, "MX", False, str(error))
    exchanges = sorted(
        (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
        for rdata in rdatas
    )
    if not exchanges:
        return CheckResult(domain, "MX", False, "no MX record", fix)
    if any(exchange == "." for _, exchange in exchanges):
        # RFC 7505 §4.2: mail whose return path has a null MX SHOULD be rejected (550 5.7.27).
        return CheckResult(domain, "MX", False, "null MX (RFC 7505): receivers may reject mail from this domain", fix)
    return CheckResult(domain, "MX", True, ", ".join(f"{pref} {name}" for pref, name in exchanges))


class _SpfQuery(spf.query):  # type: ignore[misc]
    """A pyspf query whose DNS lookups go through ``lookup`` instead of the module-wide
    ``spf.DNSLookup``, so evaluating SPF changes no global state.

    pyspf's ``query.dns`` is its single path to DNS (``dns_txt``, ``dns_a``,
    ``dns_mx``, ``dns_ptr`` all call it); this override keeps its contract:
    values as pyspf expects them, results cached per query, void lookups
    counted (RFC 7208 §4.6.4). CNAMEs are followed by dnspython.
    """

    def __init__(self, lookup: Callable[[str, str], list[Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lookup = lookup

    def dns(self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # not a valid DNS name: pyspf treats this as no data
        key = (name, qtype)
        if key not in self.cache:
            self.cache[key] = self._lookup(name, qtype)
        result: list[Any] = self.cache[key]
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


async def _spf_values(resolver: dns.asyncresolver.Resolver, name: str, qtype: str) -> list[Any]:
    """Answers in pyspf's shapes: address text, (preference, exchange), PTR target, [bytes]."""
    values: list[Any] = []
    for rdata in await _resolve(resolver, name, qtype):
        if qtype in ("A", "AAAA"):
            values.append(rdata.address)  # type: ignore[attr-defined]
        elif qtype == "MX":
            values.append((rdata.preference, rdata.exchange.to_text(omit_final_dot=True)))  # type: ignore[attr-defined]
        elif qtype == "PTR":
            values.append(rdata.target.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
        elif qtype in ("TXT", "SPF"):
            values.append(list(rdata.strings))  # type: ignore[attr-defined]
    return values


def _evaluate_spf(
    loop: asyncio.AbstractEventLoop, resolver: dns.asyncresolver.Resolver, domain: str, host: str, address: str
) -> tuple[str, str]:
    """pyspf's (result, explanation) for mail from ``postmaster@domain`` sent by ``address``.

    Runs in a worker thread (pyspf is synchronous); each lookup is run on
    ``loop`` with the async resolver and waited for here.
    """

    def lookup(name: str, qtype: str) -> list[Any]:
        future = asyncio.run_coroutine_threadsafe(_spf_values(resolver, name, qtype), loop)
        try:
            return future.result(timeout=float(resolver.lifetime) + _SPF_EVALUATION_GRACE)
        except _LookupError as error:
            raise spf.TempError(f"DNS {error}") from None
        except TimeoutError:
            future.cancel()
            raise spf.TempError(f"DNS {qtype} {name}: no answer") from None

    query = _SpfQuery(lookup, i=address, s=f"postmaster@{domain}", h=host)
    try:
        result, _code, explanation = query.check()
    except Exception as error:  # a pyspf bug must fail this check, not the whole report
        return "error", f"pyspf: {type(error).__name__}: {error}"
    return str(result), str(explanation)


def _spf_fix(domain: str, record: str | None, addresses: Sequence[str]) -> str:
    """A record that authorizes ``addresses``: ``record`` with ip4:/ip6: terms added, or a new one."""
    terms = [f"ip{ipaddress.ip_address(address).version}:{address}" for address in addresses]
    if record is None:
        return _txt_line(domain, " ".join(["v=spf1", *terms, "-all"]))
    current = record.split()
    # Before "all" and "redirect=": terms after "all" are never reached (RFC 7208 §5.1),
    # and redirect= applies only when no mechanism matched (§6.1).
    position = next(
        (
            index
            for index, term in enumerate(current)
            if term.lower().lstrip("+-~?") == "all" or term.lower().startswith("redirect=")
        ),
        len(current),
    )
    current[position:position] = [term for term in terms if term not in current]
    return _txt_line(domain, " ".join(current))


async def _check_spf(
    resolver: dns.asyncresolver.Resolver, domain: str, host: str, addresses: Sequence[str]
) -> CheckResult:
    try:
        records = [text for text in map(_txt, await _resolve(resolver, domain, "TXT")) if _SPF_RECORD.match(text)]
    except _LookupError as error:
        return CheckResult(domain, "SPF", False, str(error))
    if not records:
        fix = _spf_fix(domain, None, addresses) if addresses else None
        return CheckResult(domain, "SPF", False, "no SPF record (TXT v=spf1)", fix)
    if len(records) > 1:
        return CheckResult(
            domain,
            "SPF",
            False,
            f"{len(records)} SPF records: permerror (RFC 7208 §4.5); keep one",
            _spf_fix(domain, records[0], addresses),
        )
    record = records[0]
    if not addresses:
        return CheckResult(domain, "SPF", False, f"{record!r} found, but {host} has no address to check")
    loop = asyncio.get_running_loop()
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(_evaluate_spf, loop, resolver, domain, host, address) for address in addresses)
    )
    refused = [
        (address, result, explanation)
        for address, (result, explanation) in zip(addresses, outcomes, strict=True)
        if result != "pass"
    ]
    if refused:
        detail = "; ".join(f"{address}: {result} ({explanation})" for address, result, explanation in refused)
        return CheckResult(
            domain,
            "SPF",
            False,
            f"{record!r} does not authorize {detail}",
            _spf_fix(domain, record, [address for address, _, _ in refused]),
        )
    return CheckResult(domain, "SPF", True, f"{record!r} authorizes {', '.join(addresses)}")


def _tags(record: str) -> dict[str, str]:
    """A DKIM/DMARC tag-list (RFC 6376 §3.2) as {tag: value}; whitespace around both removed."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        tag, sep, value = part.partition("=")
        if sep:
            tags.setdefault(tag.strip(), value.strip())
    return tags


async def _check_dkim(resolver: dns.asyncresolver.Resolver, key: dkim_keys.KeyFile) -> CheckResult:
    check = f"DKIM {key.selector} ({key.algorithm})"
    owner = f"{key.selector}._domainkey.{key.domain}"
    try:
        private_key = dkim_keys.load_private_key(key.path)
    except ConfigError as error:
        return CheckResult(key.domain, check, False, str(error))
    expected = _tags(dkim_keys.dns_txt_value(private_key))
    fix = dkim_keys.dns_record(key.domain, key.selector, private_key)
    try:
        texts = [_txt(rdata) for rdata in await _resolve(resolver, owner, "TXT")]
    except _LookupError as error:
        return CheckResult(key.domain, check, False, str(error))
    records = [_tags(text) for text in texts if "p" in _tags(text)]
    if not records:
        found = f" (TXT there: {texts[0]!r})" if texts else ""
        return CheckResult(key.domain, check, False, f"no DKIM key record at {owner}{found}", fix)
    if len(records) > 1:
        # RFC 6376 §3.6.2.2: several TXT records for one selector give undefined results.
        return CheckResult(key.domain, check, False, f"{len(records)} key records at {owner}; keep one", fix)
    tags = records[0]
    published = re.sub(r"\s+", "", tags["p"])  # p= may be folded with whitespace (RFC 6376 §3.6.1)
    if not published:
        return CheckResult(key.domain, check, False, f"key at {owner} is revoked (empty p=)", fix)
    if tags.get("k", "rsa") != expected["k"]:
        return CheckResult(
            key.domain,
            check,
            False,
            f"k={tags.get('k', 'rsa')} at {owner}, but the key on disk is {expected['k']}",
            fix,
        )
    if published != expected["p"]:
        return CheckResult(key.domain, check, False, f"the key at {owner} is not the one in {key.path}", fix)
    return CheckResult(key.domain, check, True, f"{owner} matches {key.path}")


async def _check_dkim_keys(resolver: dns.asyncresolver.Resolver, domain: str, key_directory: Path) -> list[CheckResult]:
    keys = dkim_keys.list_keys(key_directory, domain)
    if not keys:
        return [
            CheckResult(
                domain,
                "DKIM",
                False,
                f"no key in {key_directory / domain}; create one with: gateway dkim genkey {domain}",
            )
        ]
    return list(await asyncio.gather(*(_check_dkim(resolver, key) for key in keys)))


async def _check_dmarc(resolver: dns.asyncresolver.Resolver, domain: str) -> CheckResult:
    owner = f"_dmarc.{domain}"
    fix = _txt_line(owner, f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}")
    try:
        texts = [_txt(rdata) for rdata in await _resolve(resolver, owner, "TXT")]
    except _LookupError as error:
        return CheckResult(domain, "DMARC", False, str(error))
    records = [text for text in texts if _DMARC_RECORD.match(text)]
    if not records:
        found = f" (TXT there: {texts[0]!r})" if texts else ""
        return CheckResult(domain, "DMARC", False, f"no v=DMARC1 record at {owner}{found}", fix)
    if len(records) > 1:
        # RFC 7489 §6.6.3: with more than one record, none applies.
        return CheckResult(domain, "DMARC", False, f"{len(records)} DMARC records at {owner}; keep one", fix)
    return CheckResult(domain, "DMARC", True, records[0])


async def _check_domain(
    resolver: dns.asyncresolver.Resolver, domain: str, host: str, addresses: Sequence[str], key_directory: Path
) -> list[CheckResult]:
    mx, spf_result, dkim_results, dmarc = await asyncio.gather(
        _check_mx(resolver, domain, host),
        _check_spf(resolver, domain, host, addresses),
        _check_dkim_keys(resolver, domain, key_directory),
        _check_dmarc(resolver, domain),
    )
    return [mx, spf_result, *dkim_results, dmarc]


async def check_domains(
    config: Config, domains: Sequence[str], *, key_directory: Path | None = None, timeout: float = 10.0
) -> list[CheckResult]:
    """Run every check for the gateway host and each of ``domains``; never raises for DNS errors.

    Args:
        config: ``myhostname`` is the gateway host, ``dns_nameservers`` the servers asked.
        domains: sending domains (lowercase, no trailing dot).
        key_directory: where DKIM keys are (default: :func:`gateway.dkim.keys.key_directory`).
        timeout: seconds one DNS query may take in all (dnspython lifetime).

    Returns:
        The host's ``A/AAAA`` and ``PTR`` results, then per domain ``MX``, ``SPF``,
        ``DKIM ...``, ``DMARC``, in that order.

    Raises:
        ConfigError: the ``[dkim]`` table's ``key_directory`` is not a string.
    """
    keys = key_directory if key_directory is not None else dkim_settings.key_directory(config)
    resolver = make_resolver(config, timeout)
    host = config.myhostname.lower().rstrip(".")
    address_result, addresses = await _check_addresses(resolver, host)
    ptr_results = await asyncio.gather(*(_check_ptr(resolver, host, address) for address in addresses))
    per_domain = await asyncio.gather(
        *(_check_domain(resolver, domain.lower().rstrip("."), host, addresses, keys) for domain in domains)
    )
    return [address_result, *ptr_results, *(result for results in per_domain for result in results)]


def format_report(results: Sequence[CheckResult]) -> str:
    """One :meth:`CheckResult.line` per result, then the records to publish for the failures."""
    lines = [result.line() for result in results]
    fixes = [result.fix for result in results if not result.passed and result.fix]
    if fixes:
        lines += ["", "; records to publish:", *dict.fromkeys(fixes)]
    return "\n".join(lines)
