"""The metrics and health HTTP listener (aiohttp): ``/metrics`` and ``/healthz``.

Default ``metrics_listen = "127.0.0.1:9464"``; an empty value turns it off.
``/healthz`` answers 200 when every check of :mod:`gateway.health` passes,
503 otherwise, with one line per check naming the failing one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics
from gateway.health import HealthCheck, report

log = logging.getLogger("gateway.http")


class MetricsServer:
    """Serves Prometheus metrics and the health report.

    Args:
        host, port: where to listen (port 0 picks a free one; see ``bound_port``).
        health: coroutine returning the current health checks.
    """

    def __init__(self, host: str, port: int, health: Callable[[], Awaitable[list[HealthCheck]]]) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.runner: web.AppRunner | None = None
        self.bound_port = port

    async def _metrics(self, request: web.Request) -> web.Response:
        # In a thread: the queue gauges list the spool, which takes a while for a large queue
        # and must not stall the SMTP sessions served by the event loop.
        body = await asyncio.to_thread(generate_latest, metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        results = await self.health()
        healthy = all(r.ok for r in results)
        return web.Response(text=report(results), status=200 if healthy else 503)

    async def start(self) -> None:
        """Bind and serve. Raises OSError when the address cannot be bound."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound socket
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.bound_port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        log.info("metrics and health on http://%s:%d/metrics and /healthz", self.host, self.bound_port)

    async def stop(self) -> None:
        """Stop serving."""
        if self.runner is not None:
            await self.runner.cleanup()
