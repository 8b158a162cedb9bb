"""Inbound sender authentication: SPF, DKIM, DMARC (and optionally ARC) in one Authentication-Results.

For mail from untrusted clients (``ctx.client.trusted`` is False; trusted,
i.e. outbound, mail is skipped) the policy runs at DATA:

1. SPF of the MAIL FROM identity, or of HELO for the null sender
   (:mod:`policies.auth.spf`), together with DKIM verification of every signature
   (:mod:`policies.auth.dkim_verify`) and, with ``arc = true``, ARC chain validation;
2. DMARC for the RFC5322.From domain(s) from those results (:mod:`policies.auth.dmarc`);
3. it returns one ``Authentication-Results`` field (RFC 8601), prepended, e.g.::

       Authentication-Results: mx.example.net;
           spf=pass smtp.mailfrom=example.com;
           dkim=pass header.d=example.com header.s=sel header.a=rsa-sha256;
           dmarc=pass (p=reject dis=none) header.from=example.com

   (``smtp.helo=`` when SPF checked the HELO name, ``dkim=none`` for an
   unsigned message, ``arc=`` only when enabled), and drops every incoming
   Authentication-Results field whose authserv-id is ours (case-insensitive),
   as RFC 8601 §5 requires, so downstream filters can trust ours. Fields of
   other authserv-ids stay.

What a DMARC ``fail`` leads to (the check reports, the configuration decides):

* disposition ``reject`` and ``dmarc_reject = true``: REJECT
  ``550 5.7.1 Message rejected by the DMARC policy of <domain>``;
* disposition ``reject`` with ``dmarc_reject = false`` (the default), or
  ``quarantine``: the ``dmarc_quarantine`` mode — ``hold`` puts the message in
  the hold queue; ``tag`` (default) adds ``X-DMARC-Quarantine: yes`` (incoming
  fields of that name are removed from inbound mail, so only ours is seen;
  filter on it to file the message as junk); ``none`` only reports;
* disposition ``none`` (``p=none`` or not sampled by ``pct=``): nothing.

DNS failures are results (``temperror``), never errors. Only a resolver that
cannot work at all raises :class:`~gateway.errors.ScannerError`, which the
pipeline handles by ``on_error``.

Configuration (``[sender_auth]``)::

    authserv_id      = "mx.example.net"   # default: myhostname
    dmarc_reject     = false              # reject DMARC failures with p=reject
    dmarc_quarantine = "tag"              # "hold" | "tag" | "none"
    arc              = false              # validate ARC chains, report arc=
    timeout          = "30s"              # whole check; applied by the pipeline too
    on_error         = "tempfail"         # or "pass"; applied by the pipeline
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from gateway import metrics
from gateway import reply as replies
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.message import field_name, field_value, raw_fields, whole_bytes
from gateway.pipeline.policy import Policy, PolicyContext
from gateway.pipeline.section import ON_ERROR_CHOICES, Section
from gateway.resolver import make_resolver
from gateway.verdict import CONTINUE, Action, HeaderEdit, Verdict
from policies.auth.dkim_verify import ArcResult, DkimResult, verify_arc, verify_dkim
from policies.auth.dmarc import DmarcResult, evaluate_dmarc, strictest
from policies.auth.spf import SpfResult, check_spf

__all__ = [
    "AR_HEADER",
    "QUARANTINE_HEADER",
    "AuthResults",
    "SenderAuthentication",
    "authserv_id_of",
    "forged_fields",
    "format_authentication_results",
]

AR_HEADER = "Authentication-Results"
QUARANTINE_HEADER = ("X-DMARC-Quarantine", "yes")
QUARANTINE_MODES = ("hold", "tag", "none")
DEFAULT_TIMEOUT = 30.0  # seconds for the whole check

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 2045 token (RFC 8601 value)
_FOLD_AT = 78  # characters per line, RFC 5322 §2.1.1


@dataclass(frozen=True, slots=True)
class AuthResults:
    """Everything the checks found for one message."""

    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: tuple[DmarcResult, ...]
    arc: ArcResult | None = None


def _count(results: AuthResults) -> None:
    """Count the RFC 8601 result words per method (bounded labels)."""
    metrics.AUTH_RESULTS.labels("spf", results.spf.result).inc()
    for dkim in results.dkim or ():
        metrics.AUTH_RESULTS.labels("dkim", dkim.result).inc()
    if not results.dkim:
        metrics.AUTH_RESULTS.labels("dkim", "none").inc()
    for dmarc in results.dmarc or ():
        metrics.AUTH_RESULTS.labels("dmarc", dmarc.result).inc()
    if not results.dmarc:
        metrics.AUTH_RESULTS.labels("dmarc", "none").inc()


def _pvalue(text: str) -> str:
    """A property value: the token as is, else a quoted-string (printable ASCII only)."""
    if _TOKEN_RE.fullmatch(text):
        return text
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:200])
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    clean = "".join(c if " " <= c <= "~" and c not in "()\\" else " " for c in text[:100])
    return f"({' '.join(clean.split())})"


def _resinfo(method: str, result: str, comment: str, properties: Sequence[tuple[str, str]]) -> str:
    words = [f"{method}={result}"]
    if comment:
        words.append(_comment(comment))
    words += [f"{name}={_pvalue(value)}" for name, value in properties if value]
    return " ".join(words)


def _fold(items: list[str]) -> str:
    """One item per line (tab-indented), long items folded at spaces (RFC 5322 §2.2.3)."""
    lines: list[str] = []
    for item in items:
        current = ""
        for word in item.split(" "):
            if current and len(current) + 1 + len(word) > _FOLD_AT - 8:
                lines.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        lines.append(current)
    return "\r\n\t".join(lines)


def format_authentication_results(authserv_id: str, results: AuthResults) -> str:
    """The value of our Authentication-Results field (RFC 8601 §2.2), folded with CRLF + tab."""
    spf = results.spf
    spf_comment = spf.explanation if spf.result in ("temperror", "permerror") else ""
    items = [
        _resinfo(
            "spf", spf.result, spf_comment, [("smtp.helo" if spf.identity == "helo" else "smtp.mailfrom", spf.domain)]
        )
    ]
    if not results.dkim:
        items.append("dkim=none")
    for dkim in results.dkim:
        items.append(
            _resinfo(
                "dkim",
                dkim.result,
                "" if dkim.result == "pass" else dkim.reason,
                [("header.d", dkim.domain), ("header.s", dkim.selector), ("header.a", dkim.algorithm)],
            )
        )
    for dmarc in results.dmarc:
        comment = ""
        if dmarc.record is not None:
            comment = f"p={dmarc.record.policy}"
            if dmarc.record.subdomain_policy:
                comment += f" sp={dmarc.record.subdomain_policy}"
            comment += f" dis={dmarc.disposition}"
        if dmarc.result in ("temperror", "permerror") or not dmarc.domain:
            comment = f"{comment} {dmarc.reason}".strip()
        items.append(_resinfo("dmarc", dmarc.result, comment, [("header.from", dmarc.domain)]))
    if results.arc is not None:
        arc = results.arc
        items.append(_resinfo("arc", arc.result, "" if arc.result in ("pass", "none") else arc.reason, []))
    return _fold([f"{authserv_id};"] + [item + ";" for item in items[:-1]] + items[-1:])


def _skip_cfws(text: str, pos: int) -> int:
    depth = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\" and depth:
            pos += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth and not char.isspace():
            break
        pos += 1
    return pos


def authserv_id_of(value: str) -> str | None:
    """The authserv-id of an Authentication-Results value (RFC 8601 §2.2), or None if unreadable.

    Leading comments and white space are skipped; a quoted-string is unquoted.
    """
    pos = _skip_cfws(value, 0)
    if value[pos : pos + 1] == '"':
        out, pos = [], pos + 1
        while pos < len(value) and value[pos] != '"':
            if value[pos] == "\\":
                pos += 1
            out.append(value[pos : pos + 1])
            pos += 1
        return "".join(out) if pos < len(value) else None
    match = _TOKEN_RE.match(value, pos)
    return match.group(0) if match else None


def forged_fields(message: bytes, authserv_id: str) -> tuple[bytes, ...]:
    """The raw Authentication-Results fields (without final CRLF) that claim ``authserv_id``."""
    ours = authserv_id.lower()
    found = []
    for field in raw_fields(message):
        if field_name(field) == "authentication-results":
            claimed = authserv_id_of(field_value(field))
            if claimed is not None and claimed.lower() == ours:
                found.append(field.rstrip(b"\r\n"))
    return tuple(found)


class SenderAuthentication(Policy):
    """SPF, DKIM and DMARC for inbound mail, reported in one Authentication-Results field.

    Attributes:
        authserv_id: the authserv-id of our Authentication-Results fields.
        dmarc_reject: reject (550 5.7.1) DMARC failures whose domain asks for reject.
        dmarc_quarantine: ``"hold"``, ``"tag"`` or ``"none"`` for the other failures that ask for action.
        arc: validate ARC chains and report ``arc=``.
        timeout: seconds for the whole check (the pipeline's hook timeout).
        on_error: ``"tempfail"`` or ``"pass"``; applied by the pipeline.
        resolver: the asynchronous resolver (``dns_nameservers`` or the system's).
    """

    name: ClassVar[str] = "sender_auth"

    def __init__(self, config: Config) -> None:
        """Validate ``[sender_auth]``.

        Raises:
            ConfigError: naming ``sender_auth.<key>`` for an unknown key or a bad value.
        """
        section = Section(
            self.name,
            config.section(self.name),
            known={"authserv_id", "dmarc_reject", "dmarc_quarantine", "arc", "timeout", "on_error"},
        )
        authserv_id = section.text("authserv_id", config.myhostname) or ""
        if not _TOKEN_RE.fullmatch(authserv_id):
            raise ConfigError(
                section.key("authserv_id"), authserv_id, "a host name (letters, digits, '.', '-'; no spaces or ;)"
            )
        self.authserv_id = authserv_id
        self.dmarc_reject = section.flag("dmarc_reject", False)
        self.dmarc_quarantine = section.choice("dmarc_quarantine", "tag", QUARANTINE_MODES)
        self.arc = section.flag("arc", False)
        self.timeout = section.duration("timeout", DEFAULT_TIMEOUT)
        if self.timeout <= 0:
            raise ConfigError(section.key("timeout"), section.table["timeout"], "a duration above zero")
        self.on_error = section.choice("on_error", "tempfail", ON_ERROR_CHOICES)
        # Budget inside `timeout`: SPF may take half of it (RFC 7208 §4.6.4 asks for 20 s
        # where possible); one DNS query an eighth, so SPF and DKIM (concurrent) plus the
        # two DMARC lookups after them end before the pipeline's deadline.
        self.spf_timeout = min(20.0, self.timeout / 2)
        self.resolver = make_resolver(config, timeout=min(5.0, self.timeout / 8))

    async def authenticate(self, ctx: PolicyContext, message: bytes) -> AuthResults:
        """Run SPF, DKIM (and ARC) concurrently, then DMARC.

        Raises:
            ScannerError: when the resolver itself fails.
        """
        sender = ctx.envelope.sender if ctx.envelope is not None else ""
        message = whole_bytes(message)  # dkimpy and the ARC check take the message whole (a FileText too)
        spf_check = check_spf(str(ctx.client.address), sender, ctx.client.helo or "", self.resolver, self.spf_timeout)
        dkim_check = verify_dkim(message, self.resolver)
        arc: ArcResult | None = None
        if self.arc:
            spf, dkim, arc = await asyncio.gather(spf_check, dkim_check, verify_arc(message, self.resolver))
        else:
            spf, dkim = await asyncio.gather(spf_check, dkim_check)
        dmarc = await evaluate_dmarc(message, spf, dkim, self.resolver)
        return AuthResults(spf, tuple(dkim), tuple(dmarc), arc)

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        """Authenticate an inbound message; see the module docstring for the outcomes.

        Returns:
            CONTINUE (with the header edits), HOLD, or REJECT ``550 5.7.1``;
            CONTINUE without edits for a trusted client.

        Raises:
            ScannerError: when the resolver itself fails.
        """
        if ctx.client.trusted:
            return CONTINUE
        results = await self.authenticate(ctx, message)
        _count(results)
        value = format_authentication_results(self.authserv_id, results)
        summary = " ".join(item.strip(" \t;") for item in value.split("\r\n\t")[1:])
        ctx.log.info("%s: sender_auth %s", ctx.queue_id or "NOQUEUE", summary)
        failing = strictest(results.dmarc)
        rejecting = failing is not None and failing.disposition == "reject" and self.dmarc_reject
        prepend: tuple[tuple[str, str], ...] = ((AR_HEADER, value),)
        if failing is not None and not rejecting and self.dmarc_quarantine == "tag":
            prepend += (QUARANTINE_HEADER,)
        # A REJECT's headers are never applied; they are kept for logs and tests.
        headers = HeaderEdit(
            prepend=prepend, remove=(QUARANTINE_HEADER[0],), drop=forged_fields(message, self.authserv_id)
        )
        if failing is None:
            return Verdict(Action.CONTINUE, headers=headers)
        detail = f"dmarc=fail header.from={failing.domain} dis={failing.disposition}"
        if rejecting:
            reply = replies.dmarc_rejected(failing.domain)
            return Verdict(Action.REJECT, reply, headers=headers, reason="dmarc_reject", detail=detail)
        if self.dmarc_quarantine == "hold":
            return Verdict(Action.HOLD, headers=headers, reason="dmarc_quarantine", detail=detail)
        return Verdict(Action.CONTINUE, headers=headers)
