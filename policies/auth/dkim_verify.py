"""DKIM (RFC 6376) verification of every signature of a message, and ARC (RFC 8617) chains.

dkimpy does the cryptography; DNS is ours. The key records a message needs
(``<s>._domainkey.<d>`` of each DKIM-Signature, ARC-Seal and
ARC-Message-Signature) are fetched first, concurrently, with our asynchronous
resolver; dkimpy then runs in a worker thread with a ``dnsfunc`` that answers
from those prefetched records, so no blocking DNS happens anywhere and the
event loop never hashes a large body.

Result per signature (RFC 8601 §2.7.1 names):

* ``pass``: the signature verified;
* ``fail``: body hash or header signature did not verify;
* ``neutral``: the signature could not be processed (syntax: a missing or
  duplicate tag, unknown algorithm or canonicalization, expired, bad i=);
* ``permerror``: no usable key (NXDOMAIN/no TXT, malformed or revoked key,
  RSA key below 1024 bits), ``a=rsa-sha1`` (RFC 8301 §3.1), or ``h=`` without
  ``from`` (RFC 6376 §6.1.1);
* ``temperror``: the key lookup timed out or the servers failed.

At most :data:`MAX_SIGNATURES` signatures are verified (the topmost ones);
further ones are ignored, to bound the work a message can ask for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type information
import dkim.util  # type: ignore[import-untyped]
import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from gateway.errors import ScannerError

__all__ = [
    "DKIM_RESULTS",
    "MAX_SIGNATURES",
    "ArcResult",
    "DkimResult",
    "DnsTempError",
    "resolve_txt",
    "verify_arc",
    "verify_dkim",
]

DKIM_RESULTS = ("pass", "fail", "neutral", "temperror", "permerror")
MAX_SIGNATURES = 10  # signatures (DKIM, or ARC sets) verified per message
MAX_ARC_INSTANCES = 50  # RFC 8617 §4.2.1: i= is 1-50

log = logging.getLogger("gateway.policy.dkim")


class DnsTempError(Exception):
    """A lookup failed temporarily (timeout, SERVFAIL or REFUSED from every server)."""


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The outcome for one DKIM-Signature field.

    Attributes:
        result: one of :data:`DKIM_RESULTS`.
        domain: the ``d=`` value, lower case (``""`` when unreadable).
        selector: the ``s=`` value (``""`` when unreadable).
        algorithm: the ``a=`` value, lower case (``""`` when unreadable).
        identity: the ``i=`` value (``""`` when absent).
        reason: short text for logs and the Authentication-Results comment.
    """

    result: str
    domain: str
    selector: str
    algorithm: str
    identity: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The chain validation status of a message's ARC sets (RFC 8617 §5.2).

    Attributes:
        result: ``none`` (no ARC sets), ``pass``, ``fail`` or ``temperror``.
        instances: the highest ``i=`` found (0 for none).
        reason: dkimpy's reason text, for logs and the comment.
    """

    result: str
    instances: int = 0
    reason: str = ""


_TEMP = object()  # a prefetched key lookup that failed temporarily


async def resolve_txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[bytes]:
    """The TXT records at ``name``, each with its character-strings concatenated.

    NXDOMAIN, no TXT data and names that cannot exist give ``[]``.

    Raises:
        DnsTempError: on a timeout or a server failure.
        ScannerError: when the resolver itself fails (not a DNS outcome).
    """
    try:
        qname = dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError):
        return []
    try:
        answer = await resolver.resolve(qname, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return []
    except dns.exception.DNSException as error:
        raise DnsTempError(f"TXT {name}: {type(error).__name__}") from None
    except Exception as error:  # noqa: BLE001  (not a DNS outcome: the resolver itself is broken)
        raise ScannerError(f"DNS resolver failed: {type(error).__name__}: {error}") from None
    return [b"".join(rdata.strings) for rdata in answer]


class _QuietLogger:
    """dkimpy logs every bad signature at ERROR; for mail from strangers that is DEBUG."""

    def __init__(self, target: logging.Logger) -> None:
        self._target = target

    def isEnabledFor(self, level: int) -> bool:  # the name logging.Logger gives it
        return False  # never ask dkimpy to log message content

    def _log(self, msg: object, *args: object, **kwargs: object) -> None:
        self._target.debug("dkimpy: %s", msg)

    debug = info = warning = error = exception = _log


_QUIET = _QuietLogger(log)


def _key_name(tags: dict[bytes, bytes]) -> str | None:
    """``<s>._domainkey.<d>`` as dkimpy builds it, lower case without the final dot."""
    try:
        return (tags[b"s"] + b"._domainkey." + tags[b"d"]).decode("ascii").lower().rstrip(".")
    except (KeyError, UnicodeDecodeError):
        return None


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        return dkim.util.parse_tag_value(value)  # type: ignore[no-any-return]
    except dkim.util.InvalidTagValueList:
        return None


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace").strip() if value else ""


class _KeyStore:
    """The prefetched key records, served to dkimpy as its ``dnsfunc``; notes temporary failures."""

    def __init__(self, records: dict[str, Any]) -> None:
        self.records = records
        self.temporary: set[str] = set()

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        key = name.decode("ascii", "replace").lower().rstrip(".")
        record = self.records.get(key)
        if record is _TEMP:
            self.temporary.add(key)
            raise dkim.DnsTimeoutError(f"temporary DNS failure for {key}")
        return record


async def _prefetch(resolver: dns.asyncresolver.Resolver, names: Iterable[str]) -> dict[str, Any]:
    unique = sorted(set(names))

    async def one(name: str) -> Any:
        try:
            records = await resolve_txt(resolver, name)
        except DnsTempError:
            return _TEMP
        return records[0] if records else None  # RFC 6376 §3.6.2.2: the verifier may pick one

    found = await asyncio.gather(*(one(name) for name in unique))
    return dict(zip(unique, found))


def _parse(message: bytes, header_names: tuple[bytes, ...]) -> tuple[dkim.DKIM | None, list[bytes], str]:
    """dkimpy's view of the message and the raw values of the fields named ``header_names``."""
    try:
        verifier = dkim.DKIM(message, logger=_QUIET, minkey=1024)
    except Exception as error:  # noqa: BLE001  (dkimpy raises IndexError and others on malformed headers)
        return None, [], f"message not parseable ({type(error).__name__})"
    values = [value for name, value in verifier.headers if name.lower() in header_names]
    return verifier, values, ""


def _classify(verifier: dkim.DKIM, index: int, tags: dict[bytes, bytes], keys: _KeyStore) -> tuple[str, str]:
    """Verify signature ``index`` and name the result (the module docstring has the mapping)."""
    name = _key_name(tags) or ""
    if b"h" in tags and b"from" not in [field.strip().lower() for field in tags[b"h"].split(b":")]:
        return "permerror", "From field not signed"  # RFC 6376 §6.1.1; dkimpy does not check it
    if tags.get(b"a", b"").strip().lower() == b"rsa-sha1":
        return "permerror", "rsa-sha1 not accepted"  # RFC 8301 §3.1
    try:
        valid = verifier.verify(idx=index, dnsfunc=keys)
    except dkim.ValidationError as error:
        text = str(error)
        if text.startswith("body hash mismatch"):
            return "fail", "body hash mismatch"
        return "neutral", f"bad signature: {text[:80]}"
    except (dkim.KeyFormatError, dkim.UnknownKeyTypeError, dkim.NaClNotFoundError) as error:
        return "permerror", f"bad key: {str(error)[:80]}"
    except dkim.DKIMException as error:
        return "neutral", f"bad signature: {str(error)[:80]}"
    except Exception as error:  # noqa: BLE001  (a dkimpy bug on hostile input must not stop the mail)
        log.warning(
            "dkimpy failed on signature %d (d=%s): %s: %s", index, _text(tags.get(b"d")), type(error).__name__, error
        )
        return "neutral", f"verifier error ({type(error).__name__})"
    if valid:
        return "pass", ""
    if name in keys.temporary:
        return "temperror", "key lookup failed temporarily"
    record = keys.records.get(name)
    if not record:
        return "permerror", "no key"
    try:
        dkim.evaluate_pk(name.encode("ascii"), record)
    except (dkim.DKIMException, ValueError, KeyError) as error:
        return "permerror", f"bad key: {str(error)[:80]}"
    return "fail", "signature did not verify"


def _verify_all(verifier: dkim.DKIM, signatures: list[dict[bytes, bytes] | None], keys: _KeyStore) -> list[DkimResult]:
    results = []
    for index, tags in enumerate(signatures):
        if tags is None:
            results.append(DkimResult("neutral", "", "", "", "", "signature not parseable"))
            continue
        result, reason = _classify(verifier, index, tags, keys)
        results.append(
            DkimResult(
                result,
                _text(tags.get(b"d")).lower(),
                _text(tags.get(b"s")),
                _text(tags.get(b"a")).lower(),
                _text(tags.get(b"i")),
                reason,
            )
        )
    return results


def _has_field(message: bytes, name: bytes) -> bool:
    end = message.find(b"\n\n")
    crlf_end = message.find(b"\r\n\r\n")
    ends = [pos for pos in (end, crlf_end) if pos >= 0]
    header = message[: min(ends)] if ends else message
    return name in header.lower()


async def verify_dkim(
    message: bytes, resolver: dns.asyncresolver.Resolver, max_signatures: int = MAX_SIGNATURES
) -> list[DkimResult]:
    """Verify each DKIM-Signature of ``message`` (raw bytes as received), topmost first.

    Returns:
        One :class:`DkimResult` per signature (at most ``max_signatures``); ``[]``
        for an unsigned message (``dkim=none``).

    Raises:
        ScannerError: when the resolver itself fails.
    """
    if not _has_field(message, b"dkim-signature"):
        return []
    verifier, values, problem = await asyncio.to_thread(_parse, message, (b"dkim-signature",))
    if verifier is None:
        return [DkimResult("neutral", "", "", "", "", problem)]
    signatures = [_tags(value) for value in values[:max_signatures]]
    names = [name for tags in signatures if tags for name in [_key_name(tags)] if name]
    keys = _KeyStore(await _prefetch(resolver, names))
    return await asyncio.to_thread(_verify_all, verifier, signatures, keys)


def _arc_verify(message: bytes, keys: _KeyStore) -> tuple[Any, str]:
    try:
        chain, _results, reason = dkim.ARC(message, logger=_QUIET, minkey=1024).verify(dnsfunc=keys)
    except dkim.DKIMException as error:
        return dkim.CV_Fail, str(error)
    except Exception as error:  # noqa: BLE001  (a dkimpy bug on hostile input must not stop the mail)
        log.warning("dkimpy ARC verification failed: %s: %s", type(error).__name__, error)
        return dkim.CV_Fail, f"verifier error ({type(error).__name__})"
    return chain, str(reason)


async def verify_arc(message: bytes, resolver: dns.asyncresolver.Resolver) -> ArcResult:
    """Validate the ARC chain of ``message`` (RFC 8617 §5.2) with dkimpy.

    Returns:
        ``none`` without ARC sets; ``pass`` or ``fail`` from dkimpy; ``temperror``
        when a failure follows a temporary key lookup failure.

    Raises:
        ScannerError: when the resolver itself fails.
    """
    if not _has_field(message, b"arc-seal"):
        return ArcResult("none")
    verifier, values, problem = await asyncio.to_thread(_parse, message, (b"arc-seal", b"arc-message-signature"))
    if verifier is None:
        return ArcResult("fail", 0, problem)
    tag_lists = [tags for tags in (_tags(value) for value in values) if tags]
    instances = 0
    for tags in tag_lists:
        try:
            instances = max(instances, int(tags.get(b"i", b"0")))
        except ValueError:
            pass
    if instances > MAX_ARC_INSTANCES or len(tag_lists) > 2 * MAX_SIGNATURES:
        return ArcResult("fail", instances, "too many ARC sets")
    names = [name for tags in tag_lists for name in [_key_name(tags)] if name]
    keys = _KeyStore(await _prefetch(resolver, names))
    chain, reason = await asyncio.to_thread(_arc_verify, message, keys)
    if chain == dkim.CV_Pass:
        return ArcResult("pass", instances, reason)
    if chain == dkim.CV_None:
        return ArcResult("none", instances, reason)
    if keys.temporary:
        return ArcResult("temperror", instances, "key lookup failed temporarily")
    return ArcResult("fail", instances, reason)
