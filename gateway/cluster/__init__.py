"""State that replicas share: the rate-limit and failed-login counts, in Redis when ``[cluster] redis_url`` is set.

::

    [cluster]
    redis_url = "redis://127.0.0.1:6379/0"   # unset: each process counts in its own memory
    timeout = "1s"                           # for connecting to Redis and for each answer

The counts are the ``limits`` library's moving windows, on its Redis storage
(the redis-py asyncio client) or in memory. With Redis every worker of every
replica counts into the same windows, so a client cannot multiply a limit by
the number of processes. Nothing else is shared (each replica's spool is its
own). A Redis that is down or slow fails open: the check allows the event, a
warning is logged (at most once a minute) and
``gateway_shared_counts_errors_total`` counts it, so mail keeps flowing with
the limits off until Redis is back.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from gateway import metrics
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.pipeline.section import Section

log = logging.getLogger("gateway.cluster")
SECTION = "cluster"
WARNING_INTERVAL = 60.0  # seconds between two "Redis is failing" warnings


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """``[cluster]``: where the shared counts live (None: this process's memory) and the timeout in seconds."""

    redis_url: str | None = None
    timeout: float = 1.0

    @classmethod
    def from_config(cls, config: Config) -> ClusterSettings:
        """The ``[cluster]`` table of ``config``.

        Raises:
            ConfigError: naming ``cluster.redis_url`` when it is not a redis:// or rediss:// URL.
        """
        section = Section(SECTION, config.section(SECTION), {"redis_url", "timeout"})
        url = section.text("redis_url")
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(section.key("redis_url"), url, "redis://host:port/db, rediss://... or unix:///path")
        return cls(url or None, section.duration("timeout", 1.0))


class SharedCounts:
    """Moving-window counts on the configured storage; every error of the storage allows the event (fail open).

    Args:
        settings: ``[cluster]``.
    """

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        storage: Storage
        if settings.redis_url:
            storage = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",
                wrap_exceptions=True,
                socket_timeout=settings.timeout,
                socket_connect_timeout=settings.timeout,
            )
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._warned_at = -WARNING_INTERVAL

    async def hit(self, item: RateLimitItem, *keys: str) -> bool:
        """Count one event under ``keys``; False when the window is full (the event is then not counted)."""
        return await self._open_on_failure(self._limiter.hit(item, *keys))

    async def test(self, item: RateLimitItem, *keys: str) -> bool:
        """True while the window under ``keys`` has room (nothing is counted)."""
        return await self._open_on_failure(self._limiter.test(item, *keys))

    async def _open_on_failure(self, answer: Awaitable[bool]) -> bool:
        """The storage's answer, or True (allowed) when the storage failed."""
        try:
            return bool(await answer)
        except Exception as error:  # noqa: BLE001 - any storage failure: fail open
            self._failed(error)
            return True

    def _failed(self, error: Exception) -> None:
        metrics.SHARED_COUNTS_ERRORS.inc()
        now = time.monotonic()
        if now - self._warned_at >= WARNING_INTERVAL:
            self._warned_at = now
            log.warning(
                "cluster: the shared counts at %s failed (%s): limits are off until it answers again",
                self.settings.redis_url or "memory",
                error,
            )


@functools.cache
def shared_counts(settings: ClusterSettings) -> SharedCounts:
    """This process's one :class:`SharedCounts` for ``settings`` (kept across reloads that keep them)."""
    return SharedCounts(settings)
