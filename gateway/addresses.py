"""RFC 5321 mailbox handling for relay decisions.

aiosmtpd parses addresses with ``email._header_value_parser``, which accepts
source routes (stripped), ``%`` hacks, bang paths and quoted local parts. A
relay decision must not trust that: :func:`split_mailbox` gives the domain we
would route to, and :func:`has_routing_tricks` flags local parts that ask a
downstream host to route on (Postfix ``allow_untrusted_routing = no``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A parsed ``local@domain``; the domain is lower case without a trailing dot."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local


def split_mailbox(address: str) -> Mailbox:
    """Split at the last ``@`` outside quotes; IDNA domains are kept as given (lower case).

    Raises:
        ValueError: when there is no ``@``, or the local part or domain is empty.
    """
    in_quotes = False
    escaped = False
    at = -1
    for index, char in enumerate(address):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == "@" and not in_quotes:
            at = index
    domain = address[at + 1 :].lower().rstrip(".") if at > 0 else ""
    if at <= 0 or not domain:
        raise ValueError(f"{address!r} is not local@domain")
    if domain.startswith("[") and not is_address_literal(domain):
        raise ValueError(f"{address!r} has a malformed address literal")
    return Mailbox(address[:at], domain)


def is_address_literal(domain: str) -> bool:
    """True for a valid RFC 5321 §4.1.3 address literal: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``.

    The general form ``[tag:content]`` names no standard tag but ``IPv6``, so it is refused,
    as ``[999.999.999.999]`` and any other text that is not an address.
    """
    if not (domain.startswith("[") and domain.endswith("]")):
        return False
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def has_routing_tricks(mailbox: Mailbox) -> bool:
    """True for a local part that routes on: ``user%other``, ``other!user``, ``"user@other"``.

    Source routes (``@a:user@b``) never reach here: aiosmtpd's parser drops the
    route, so the address is judged by its final domain.
    """
    local = mailbox.local
    if local.startswith('"') and local.endswith('"'):
        local = local[1:-1]
    return any(char in local for char in "%!@")


def domain_matches(domain: str, patterns: tuple[str, ...]) -> bool:
    """Postfix-style domain list match: ``example.com`` exactly, ``.example.com`` any subdomain."""
    domain = domain.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("."):
            if domain.endswith(pattern):
                return True
        elif domain == pattern:
            return True
    return False
