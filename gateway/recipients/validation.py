"""``relay_recipient_maps``: which addresses of ``relay_domains`` exist, so mail for others is refused at RCPT.

Postfix's ``relay_recipient_maps``: an inbound MX that accepts mail for users
that do not exist has to bounce it later to senders that are usually forged
(backscatter). Each source answers for one address: known, unknown, or
unavailable (a lookup that failed). The answers combine as Postfix's list of
maps: the first source that knows the address accepts it; an address no source
knows is refused ``550 5.1.1 <addr>: Recipient address rejected: User unknown
in relay recipient table``, unless a source could not answer, which gives
``451 4.3.0 <addr>: Recipient address rejected: Temporary lookup failure``
(never a 550 for a lookup that failed).

The text source is a Postfix table of addresses and ``@domain`` entries (the
value, if any, is not used), looked up as ``user+ext@domain``, ``user@domain``,
``@domain``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.recipients.tables import lookup_order, read_table

KEY = "relay_recipient_maps"


class Lookup(enum.Enum):
    """One source's answer for one address."""

    KNOWN = "known"
    UNKNOWN = "unknown"
    UNAVAILABLE = "unavailable"  # the source could not answer (down, slow, an error)
    UNVERIFIED = "unverified"  # a verification probe got no final answer (450 4.1.1)


@dataclass(frozen=True, slots=True)
class Answer:
    """A source's answer, and what it is based on (a probe's reply) for the refusal's text."""

    lookup: Lookup
    detail: str | None = None


KNOWN, UNKNOWN = Answer(Lookup.KNOWN), Answer(Lookup.UNKNOWN)


class RecipientSource(Protocol):
    """A place that knows recipients: a table, a directory, a verification probe."""

    name: str

    async def check(self, address: str) -> Answer: ...


class RecipientTable:
    """A text table of recipients (``relay_recipient_maps`` entry that is a file path).

    Raises:
        ConfigError: naming ``relay_recipient_maps`` when the file cannot be read.
    """

    def __init__(self, path: Path, delimiter: str = "+") -> None:
        self.path = path
        self.name = f"{KEY} {path}"
        self.delimiter = delimiter
        self.keys = frozenset(read_table(path, KEY, values_required=False))

    async def check(self, address: str) -> Answer:
        """KNOWN when ``address``, its extension-less form or its ``@domain`` is listed."""
        for key, _ in lookup_order(address, self.delimiter):
            if key in self.keys:
                return KNOWN
        return UNKNOWN


async def combined(sources: Sequence[RecipientSource], address: str) -> tuple[Answer, str | None]:
    """Ask the sources in order until one knows ``address``: ``(its answer, its name)``.

    When none does: the first UNAVAILABLE answer (a lookup failed: never a 550),
    else the first UNVERIFIED one, else the last UNKNOWN one (a probe's reply is
    the most telling), each with its source's name; ``(UNKNOWN, None)`` without sources.
    """
    found: dict[Lookup, tuple[Answer, str]] = {}
    for source in sources:
        answer = await source.check(address)
        if answer.lookup is Lookup.KNOWN:
            return answer, source.name
        if answer.lookup is Lookup.UNKNOWN or answer.lookup not in found:
            found[answer.lookup] = (answer, source.name)
    for lookup in (Lookup.UNAVAILABLE, Lookup.UNVERIFIED, Lookup.UNKNOWN):
        if lookup in found:
            return found[lookup]
    return UNKNOWN, None
