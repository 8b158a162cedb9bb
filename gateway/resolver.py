"""The asynchronous DNS resolver (dnspython), optionally pointed at ``dns_nameservers``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.config import Config

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.resolver


def make_resolver(config: Config, timeout: float = 10.0) -> dns.asyncresolver.Resolver:
    """A resolver using ``dns_nameservers`` (tests: a loopback server) or /etc/resolv.conf.

    ``timeout`` is the lifetime of one query in seconds.
    """
    import dns.asyncresolver
    import dns.nameserver

    if config.dns_nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in config.dns_nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 3.0)
    return resolver


class LazyResolver:
    """:func:`make_resolver`'s resolver, made (and dnspython imported) at the first lookup.

    A gateway whose relayhost is an address never resolves a name, and dnspython
    costs each process about 4 MB; one that does resolve pays the import once.
    ``await resolve(name, rdtype)`` is :meth:`dns.asyncresolver.Resolver.resolve`
    with its errors (NXDOMAIN, NoAnswer, Timeout, NoNameservers).
    """

    def __init__(self, config: Config, timeout: float = 10.0) -> None:
        self.config = config
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def resolve(self, name: str, rdtype: str, **options: Any) -> dns.resolver.Answer:
        """Look ``name`` up (``rdtype`` "MX", "A", "AAAA", ...); see the class for the errors."""
        if self._resolver is None:
            self._resolver = make_resolver(self.config, self.timeout)
        return await self._resolver.resolve(name, rdtype, **options)
