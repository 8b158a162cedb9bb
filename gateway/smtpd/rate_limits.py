"""Client rate limits, as Postfix's anvil(8): connections, messages and recipients per client per time unit.

Keys (top level, Postfix's names; a limit of 0, the default, is off)::

    smtpd_client_connection_rate_limit = 0   # connections per client per anvil_rate_time_unit
    smtpd_client_message_rate_limit = 0      # MAIL FROM requests per client per unit
    smtpd_client_recipient_rate_limit = 0    # RCPT TO requests per client per unit
    anvil_rate_time_unit = "60s"
    smtpd_client_event_limit_exceptions = ["mynetworks"]   # "mynetworks" and/or CIDR networks

A client is an IPv4 address or an IPv6 /64 (:func:`gateway.smtpd.connection_limits.client_key`).
Past a limit the gateway answers as Postfix's smtpd does: ``421 4.7.0 Error: too
many connections from <addr>`` (and closes), ``450 4.7.1 Error: too much mail
from <addr>`` at MAIL, ``450 4.7.1 Error: too many recipients from <addr>`` at RCPT.
A refused request is not counted, so a client that waits gets through again.
The clients of ``mynetworks`` (and of ``auto_trust_networks``) are exempt by
default, as in Postfix.

The counts are moving windows of the ``limits`` library
(:mod:`gateway.cluster`): in this process's memory (each worker counts its own
sessions, so with ``workers = N`` a client may reach up to N times a limit, and
a restart forgets them), or with ``[cluster] redis_url`` in Redis, shared by
every worker of every replica (failing open when Redis does not answer).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from limits import RateLimitItemPerSecond

from gateway.cluster import ClusterSettings, shared_counts
from gateway.config import Config
from gateway.envelope import ClientInfo
from gateway.networks import NetworkSet
from gateway.smtpd.connection_limits import client_key
from gateway.values import Network, parse_network

EVENTS = ("connection", "message", "recipient")
MYNETWORKS = "mynetworks"
_TRUSTED_BY_NETWORK = ("mynetworks", "auto_trust_networks")


@dataclass(frozen=True, slots=True)
class RateSettings:
    """The limits, validated: events per ``time_unit`` seconds (0: no limit), and who is exempt."""

    connection: int = 0
    message: int = 0
    recipient: int = 0
    time_unit: float = 60.0
    exempt_mynetworks: bool = True
    exempt_networks: tuple[Network, ...] = ()
    cluster: ClusterSettings = ClusterSettings()

    @property
    def enabled(self) -> bool:
        """True when any limit is set."""
        return bool(self.connection or self.message or self.recipient)

    def exempts(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, in_trusted_network: bool, networks: NetworkSet
    ) -> bool:
        """``smtpd_client_event_limit_exceptions`` for one client: ``mynetworks`` listed and the client in a
        trusted network (mynetworks or auto_trust_networks), or the client in one of the listed ``networks``
        (this settings' ``exempt_networks`` as a :class:`NetworkSet`, built once by the caller)."""
        return (self.exempt_mynetworks and in_trusted_network) or address in networks

    @classmethod
    def from_config(cls, config: Config) -> RateSettings:
        """The rate-limit keys of ``config`` (validated by :func:`gateway.config.build`)."""
        exceptions = config.smtpd_client_event_limit_exceptions
        return cls(
            config.smtpd_client_connection_rate_limit,
            config.smtpd_client_message_rate_limit,
            config.smtpd_client_recipient_rate_limit,
            config.anvil_rate_time_unit,
            MYNETWORKS in exceptions,
            tuple(parse_network(entry) for entry in exceptions if entry != MYNETWORKS),
            ClusterSettings.from_config(config),
        )


class ClientRates:
    """Counts each client's connections, messages and recipients; says when one is over its limit.

    Args:
        settings: the limits and exceptions.
    """

    def __init__(self, settings: RateSettings) -> None:
        self.settings = settings
        seconds = max(int(settings.time_unit), 1)
        self._items = {
            event: RateLimitItemPerSecond(limit, seconds)
            for event, limit in zip(EVENTS, (settings.connection, settings.message, settings.recipient))
            if limit
        }
        self._counts = shared_counts(settings.cluster)
        self._exempt_networks = NetworkSet(settings.exempt_networks)

    def exempt(self, client: ClientInfo) -> bool:
        """True for a client the limits do not apply to (``smtpd_client_event_limit_exceptions``)."""
        return self.settings.exempts(client.address, client.trusted_by in _TRUSTED_BY_NETWORK, self._exempt_networks)

    async def allow(self, event: str, client: ClientInfo) -> bool:
        """Count one ``event`` (``connection``, ``message`` or ``recipient``) of ``client``; False when over.

        An event over the limit is not counted; an exempt client, or an event without a limit, is always allowed.
        """
        item = self._items.get(event)
        if item is None or self.exempt(client):
            return True
        return await self._counts.hit(item, "rate", event, client_key(str(client.address)))


@functools.cache
def process_rates(settings: RateSettings) -> ClientRates:
    """This process's one :class:`ClientRates` for ``settings``: the counts outlive a reload that keeps them."""
    return ClientRates(settings)
