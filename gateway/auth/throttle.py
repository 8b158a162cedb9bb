"""Brute-force defence for SMTP AUTH: failed logins counted per client and per login, in a moving window.

Postfix has ``smtpd_client_auth_rate_limit`` (AUTH requests per client per
``anvil_rate_time_unit``); this counts failures instead, so a user who logs in
every minute is never slowed, and counts them per login too, so one account
attacked from many addresses is slowed as well. Past ``failure_limit``
failures within ``failure_window`` seconds, further AUTH from that client (or
for that login) is answered ``454 4.7.0`` after a pause, without a password
check (:mod:`gateway.smtpd.sasl`).

The counts are the ``limits`` library's moving windows (:mod:`gateway.cluster`):
in this process's memory (each worker counts its own sessions, so with
``workers = N`` a client may fail up to N times ``failure_limit``, and a restart
forgets them), or with ``[cluster] redis_url`` in Redis, shared by every worker
of every replica and kept across restarts (failing open when Redis does not answer).
"""

from __future__ import annotations

import functools

from limits import RateLimitItemPerSecond

from gateway.cluster import ClusterSettings, shared_counts


class AuthThrottle:
    """Failed-login counts.

    Args:
        limit: failures allowed per client key and per login within ``window``; 0 turns counting off.
        window: seconds.
        cluster: where the counts live (:mod:`gateway.cluster`: this process's memory, or Redis).
    """

    def __init__(self, limit: int, window: float, cluster: ClusterSettings = ClusterSettings()) -> None:
        self.limit = limit
        self._item = RateLimitItemPerSecond(max(limit, 1), max(int(window), 1))
        self._counts = shared_counts(cluster)

    async def client_blocked(self, client_key: str) -> bool:
        """True when ``client_key`` (an IPv4 address or an IPv6 /64) has used up its failures."""
        return self.limit > 0 and not await self._counts.test(self._item, "auth-client", client_key)

    async def login_blocked(self, login: str) -> bool:
        """True when ``login`` has used up its failures (from any client)."""
        return self.limit > 0 and not await self._counts.test(self._item, "auth-login", login.lower())

    async def failed(self, client_key: str, login: str | None) -> None:
        """Count one failed login from ``client_key`` (and for ``login``, when the client named one)."""
        if self.limit <= 0:
            return
        await self._counts.hit(self._item, "auth-client", client_key)
        if login:
            await self._counts.hit(self._item, "auth-login", login.lower())


@functools.cache
def process_throttle(limit: int, window: float, cluster: ClusterSettings = ClusterSettings()) -> AuthThrottle:
    """This process's one :class:`AuthThrottle` for these settings: the counts outlive a reload that keeps them."""
    return AuthThrottle(limit, window, cluster)
