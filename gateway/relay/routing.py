"""Where a recipient's mail goes next (Postfix trivial-rewrite + smtp(8) host lookup).

Order: ``transport_maps`` entry for the recipient domain (exact, then parent
``.domain`` entries) → ``relayhost`` (an ordered failover list) → the
recipient domain's MX hosts by preference, falling back to its A/AAAA records
(RFC 5321 §5.1). ``[host]:port`` skips the MX lookup.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.addresses import split_mailbox
from gateway.config import Config
from gateway.relay import replies
from gateway.reply import Reply
from gateway.values import NextHop


@dataclass(frozen=True, slots=True)
class Destination:
    """A delivery destination: recipients sharing it are delivered together.

    name: what concurrency limits and logs key on (``[relay]:587`` or ``example.com``).
    hops: next hops tried in order (relayhost failover list).
    label: bounded metric label: the configured next hop, or ``mx`` for direct delivery.
    """

    name: str
    hops: tuple[NextHop, ...]
    label: str = "mx"


@dataclass(frozen=True, slots=True)
class TargetHost:
    """One SMTP server to try: its name (for TLS and logs), address and port."""

    name: str
    address: str
    port: int
    hop: NextHop

    def describe(self) -> str:
        """Postfix log form ``name[address]:port``."""
        return f"{self.name}[{self.address}]:{self.port}"


class RoutingError(Exception):
    """No host can be found for a destination; ``reply`` says why (4xx: retry, 5xx: bounce)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(str(reply))


class Resolver(Protocol):
    """What the router asks of a resolver: dnspython's, or :class:`gateway.resolver.LazyResolver`."""

    async def resolve(self, name: str, rdtype: str) -> Any:
        """The answer's records; raises dnspython's NXDOMAIN, NoAnswer, Timeout, NoNameservers."""


class Router:
    """Maps recipients to destinations and destinations to target hosts.

    dnspython is imported by the lookups themselves (a relayhost given as an
    address never loads it; see :class:`gateway.resolver.LazyResolver`).
    """

    def __init__(self, config: Config, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver

    def destination_for(self, recipient: str) -> Destination:
        """The destination of ``recipient``.

        Raises:
            RoutingError: 5.1.3 for an address without a domain.
        """
        try:
            domain = split_mailbox(recipient).domain
        except ValueError:
            raise RoutingError(replies.BAD_ADDRESS_SYNTAX) from None
        transport = self._transport(domain)
        if transport:
            name = ", ".join(str(h) for h in transport)
            return Destination(name, transport, name)
        if self.config.relayhost:
            name = ", ".join(str(h) for h in self.config.relayhost)
            return Destination(name, self.config.relayhost, name)
        return Destination(domain, (NextHop(domain, None, True),))

    def _transport(self, domain: str) -> tuple[NextHop, ...] | None:
        maps = self.config.transport_maps
        if domain in maps:
            return maps[domain]
        labels = domain.split(".")
        for index in range(1, len(labels)):
            parent = "." + ".".join(labels[index:])
            if parent in maps:
                return maps[parent]
        return None

    async def hosts(self, destination: Destination) -> list[TargetHost]:
        """The hosts to try, in order.

        Raises:
            RoutingError: when no hop yields a host (the last hop's reason).
        """
        result: list[TargetHost] = []
        error: RoutingError | None = None
        for hop in destination.hops:
            try:
                result.extend(await self._hop_hosts(hop))
            except RoutingError as exc:
                error = exc
        if not result:
            raise error or RoutingError(replies.NO_ROUTE)
        return result

    async def _hop_hosts(self, hop: NextHop) -> list[TargetHost]:
        port = hop.port or self.config.smtp_default_port
        if not hop.mx_lookup:
            return [TargetHost(hop.host, address, port, hop) for address in await self._addresses(hop.host)]
        names = await self._mx_names(hop.host)
        hosts: list[TargetHost] = []
        last: RoutingError | None = None
        for name in names:
            try:
                hosts.extend(TargetHost(name, a, port, hop) for a in await self._addresses(name))
            except RoutingError as exc:
                last = exc
        if not hosts and last:
            raise last
        return hosts

    async def _mx_names(self, domain: str) -> list[str]:
        import dns.exception
        import dns.resolver

        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise RoutingError(replies.domain_not_found(domain)) from None
        except dns.resolver.NoAnswer:
            return [domain]  # implicit MX (RFC 5321 §5.1)
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
            raise RoutingError(replies.domain_lookup_failed(domain)) from error
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if len(records) == 1 and str(records[0].exchange) == ".":
            raise RoutingError(replies.null_mx(domain))
        return [str(r.exchange).rstrip(".").lower() for r in records if str(r.exchange) != "."]

    async def _addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        if host == "localhost":
            return ["127.0.0.1"]
        import dns.exception
        import dns.resolver

        addresses: list[str] = []
        nxdomain = False
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype)
                addresses.extend(str(r) for r in answer)
            except dns.resolver.NXDOMAIN:
                nxdomain = True
            except dns.resolver.NoAnswer:
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
                raise RoutingError(replies.host_lookup_failed(host)) from error
        if not addresses:
            if nxdomain:
                raise RoutingError(replies.host_not_found(host))
            raise RoutingError(replies.host_without_address(host))
        return addresses
