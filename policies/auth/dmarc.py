"""DMARC (RFC 7489): policy discovery, identifier alignment and the disposition to apply.

Author Domain (RFC 7489 §6.6.1): the domain of each address in the
RFC5322.From field(s). RFC 5322 wants exactly one From field; when a message
has several addresses with different domains (in one field or several), each
domain is checked and the strictest policy among those that fail applies, as
§6.6.1 recommends; more than :data:`MAX_AUTHOR_DOMAINS` distinct domains is a
``permerror`` (the denial-of-service guard of the DMARCbis drafts). No From
field, or no domain in it, is ``none``: there is no identifier to check.

Policy discovery (§6.6.3): the TXT records at ``_dmarc.<author domain>`` that
start with ``v=DMARC1``; when there are none, those at
``_dmarc.<organizational domain>`` (public suffix list, §3.2, bundled with
the ``publicsuffixlist`` package; nothing is fetched). More than one record
at the name that answered, or a record without a valid ``p=`` (and no
``rua=`` to fall back to ``p=none``, step 6) is ``permerror``. A temporary DNS
failure is ``temperror`` and stops discovery.

Alignment (§3.1): an SPF ``pass`` aligns when the checked domain (the MAIL
FROM domain, or the HELO name for the null sender, RFC 7208 §2.4) equals the
Author Domain (``aspf=s``) or shares its organizational domain (``aspf=r``,
the default); a DKIM ``pass`` likewise by its ``d=`` and ``adkim``.
``pass`` needs one aligned pass; without one, ``temperror`` when an
SPF or DKIM check whose domain would have aligned failed temporarily (so a
DNS hiccup never triggers p=reject), else ``fail``.

Disposition of a ``fail``: ``sp=`` when the record came from the
organizational domain and the Author Domain is a subdomain of it, else
``p=``; with ``pct=`` below 100 a message not sampled gets the next milder
policy (§6.6.4: reject → quarantine → none).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import dns.asyncresolver
from publicsuffixlist import PublicSuffixList

from gateway.message import field_name, field_value, raw_fields
from policies.auth.dkim_verify import DkimResult, DnsTempError, resolve_txt
from policies.auth.spf import SpfResult, valid_domain

__all__ = [
    "DMARC_RESULTS",
    "MAX_AUTHOR_DOMAINS",
    "POLICIES",
    "DmarcRecord",
    "DmarcResult",
    "check_dmarc",
    "evaluate_dmarc",
    "from_domains",
    "organizational_domain",
    "parse_record",
    "strictest",
]

DMARC_RESULTS = ("pass", "fail", "none", "temperror", "permerror")
POLICIES = ("none", "quarantine", "reject")  # mildest first
MAX_AUTHOR_DOMAINS = 10

_VERSION_RE = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)")


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC policy record (RFC 7489 §6.3).

    Attributes:
        policy: ``p=``; one of :data:`POLICIES`.
        subdomain_policy: ``sp=``, or None when absent (then ``p=`` applies).
        adkim: ``"r"`` (relaxed, default) or ``"s"`` (strict).
        aspf: ``"r"`` or ``"s"``.
        pct: 0-100, percentage of failing messages the policy applies to.
    """

    policy: str
    subdomain_policy: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC outcome for one Author Domain.

    Attributes:
        result: one of :data:`DMARC_RESULTS`.
        domain: the Author Domain (RFC5322.From, A-label, lower case); ``""`` when none.
        policy: the published policy that applies to ``domain`` (``p=`` or ``sp=``), or
            None without a usable record.
        disposition: what the domain owner asks for this message: the policy after
            ``pct=`` sampling for a ``fail``, ``"none"`` for every other result.
        record_domain: where the record was found (``domain`` or its organizational domain).
        spf_aligned: an SPF pass aligned with ``domain``.
        dkim_aligned: a DKIM pass aligned with ``domain``.
        reason: short text for logs and the Authentication-Results comment.
        record: the record that was used, if any.
    """

    result: str
    domain: str
    policy: str | None = None
    disposition: str = "none"
    record_domain: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""
    record: DmarcRecord | None = None


@lru_cache(maxsize=1)
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package; no network


def organizational_domain(domain: str) -> str:
    """The Organizational Domain (RFC 7489 §3.2): public suffix plus one label.

    A domain that is itself a public suffix (or has no private part) is its own.
    """
    domain = domain.lower().rstrip(".")
    return _suffix_list().privatesuffix(domain) or domain


def _aligned(identifier: str, author: str, mode: str) -> bool:
    identifier = identifier.lower().rstrip(".")
    if not identifier:
        return False
    if mode == "s":
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


def parse_record(text: str) -> DmarcRecord:
    """Parse a record that starts with ``v=DMARC1``.

    Unknown tags are ignored; bad ``adkim``/``aspf``/``pct`` values fall back to
    their defaults (§6.3 "syntax errors ... discarded in favor of default values").

    Raises:
        ValueError: when ``p=`` (or a present ``sp=``) is missing or invalid and no
            ``rua=`` allows falling back to ``p=none`` (§6.6.3 step 6).
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if equals and name and name not in tags:
            tags[name] = value.strip()
    policy = tags.get("p", "").lower()
    subdomain = tags["sp"].lower() if "sp" in tags else None
    if policy not in POLICIES or (subdomain is not None and subdomain not in POLICIES):
        if ":" not in tags.get("rua", ""):
            raise ValueError("no valid p= (or invalid sp=) and no rua=")
        policy, subdomain = "none", None
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return DmarcRecord(
        policy, subdomain, adkim if adkim in ("r", "s") else "r", aspf if aspf in ("r", "s") else "r", pct
    )


def _to_ascii(domain: str) -> str | None:
    domain = domain.strip().lower().rstrip(".")
    try:
        ascii_domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ascii_domain if valid_domain(ascii_domain) else None


def from_domains(message: bytes) -> tuple[list[str], str]:
    """The distinct Author Domains of ``message``, in order, and a problem text when there are none.

    Domains are A-labels in lower case; unusable domains (address literals, a
    single label) are left out.
    """
    values = [field_value(field) for field in raw_fields(message) if field_name(field) == "from"]
    if not values:
        return [], "no From field"
    domains: list[str] = []
    for _display, address in email.utils.getaddresses(values):
        local, at, domain = address.rpartition("@")
        ascii_domain = _to_ascii(domain) if at and local else None
        if ascii_domain and ascii_domain not in domains:
            domains.append(ascii_domain)
    return domains, "" if domains else "no domain in From"


async def _discover(resolver: dns.asyncresolver.Resolver, domain: str) -> tuple[list[str], str]:
    """The ``v=DMARC1`` records for ``domain`` and the domain where they were found.

    Raises:
        DnsTempError: on a temporary lookup failure.
    """
    organizational = organizational_domain(domain)
    for candidate in dict.fromkeys((domain, organizational)):
        texts = [raw.decode("utf-8", "replace") for raw in await resolve_txt(resolver, f"_dmarc.{candidate}")]
        records = [text for text in texts if _VERSION_RE.match(text)]
        if records:
            return records, candidate
    return [], ""


def _milder(policy: str) -> str:
    return POLICIES[max(0, POLICIES.index(policy) - 1)]


async def check_dmarc(
    domain: str,
    spf: SpfResult,
    dkim: Sequence[DkimResult],
    resolver: dns.asyncresolver.Resolver,
    sample: Callable[[], float] = random.random,
) -> DmarcResult:
    """Evaluate DMARC for one Author Domain (A-label, lower case).

    ``sample`` returns a float in [0, 1) for ``pct=`` sampling.

    Raises:
        ScannerError: when the resolver itself fails (DNS failures are ``temperror``).
    """
    try:
        records, record_domain = await _discover(resolver, domain)
    except DnsTempError as error:
        return DmarcResult("temperror", domain, reason=f"DNS: {error}")
    if not records:
        return DmarcResult("none", domain, reason="no DMARC record")
    if len(records) > 1:
        return DmarcResult(
            "permerror",
            domain,
            record_domain=record_domain,
            reason=f"{len(records)} DMARC records at _dmarc.{record_domain}",
        )
    try:
        record = parse_record(records[0])
    except ValueError as error:
        return DmarcResult("permerror", domain, record_domain=record_domain, reason=str(error))
    subdomain = record_domain != domain
    policy = record.subdomain_policy if subdomain and record.subdomain_policy else record.policy
    spf_aligned = spf.result == "pass" and _aligned(spf.domain, domain, record.aspf)
    dkim_aligned = any(r.result == "pass" and _aligned(r.domain, domain, record.adkim) for r in dkim)
    passed = DmarcResult("pass", domain, policy, "none", record_domain, spf_aligned, dkim_aligned, record=record)
    if spf_aligned or dkim_aligned:
        return passed
    if (spf.result == "temperror" and _aligned(spf.domain, domain, record.aspf)) or any(
        r.result == "temperror" and _aligned(r.domain, domain, record.adkim) for r in dkim
    ):
        return replace(passed, result="temperror", reason="aligned check failed temporarily")
    disposition = policy if sample() * 100 < record.pct else _milder(policy)
    return replace(passed, result="fail", disposition=disposition, reason="no aligned pass")


async def evaluate_dmarc(
    message: bytes,
    spf: SpfResult,
    dkim: Sequence[DkimResult],
    resolver: dns.asyncresolver.Resolver,
    sample: Callable[[], float] = random.random,
) -> list[DmarcResult]:
    """DMARC for every Author Domain of ``message`` (usually one); never empty.

    Raises:
        ScannerError: when the resolver itself fails.
    """
    domains, problem = from_domains(message)
    if not domains:
        return [DmarcResult("none", "", reason=problem)]
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return [DmarcResult("permerror", "", reason=f"{len(domains)} From domains")]
    return list(await asyncio.gather(*(check_dmarc(domain, spf, dkim, resolver, sample) for domain in domains)))


def strictest(results: Sequence[DmarcResult]) -> DmarcResult | None:
    """The failing result with the strictest disposition (§6.6.1), or None when none asks for action."""
    failing = [r for r in results if r.result == "fail" and r.disposition != "none"]
    return max(failing, key=lambda r: POLICIES.index(r.disposition), default=None)
