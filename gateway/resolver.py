"""The asynchronous DNS resolver (dnspython), optionally pointed at ``dns_nameservers``."""

from __future__ import annotations

import dns.asyncresolver
import dns.nameserver

from gateway.config import Config


def make_resolver(config: Config, timeout: float = 10.0) -> dns.asyncresolver.Resolver:
    """A resolver using ``dns_nameservers`` (tests: a loopback server) or /etc/resolv.conf.

    ``timeout`` is the lifetime of one query in seconds.
    """
    if config.dns_nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                for host, port in config.dns_nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 3.0)
    return resolver
