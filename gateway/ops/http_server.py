"""The metrics and health HTTP listener: ``GET /metrics``, ``/healthz`` and ``/readyz`` (HTTP/1.1, RFC 9112).

Default ``metrics_listen = "127.0.0.1:9464"``; an empty value turns it off.
``/healthz`` (liveness: every listener accepts connections) and ``/readyz``
(readiness, :mod:`gateway.ops.readiness`) answer 200 when each of their checks
passes, 503 otherwise, with one line per check naming the failing one.

Two fixed pages need little of HTTP, and the little must hold against a client
that tries to use up the process: at most :data:`MAX_CONNECTIONS` connections
at once (more are closed at once), each request's line and headers within
:data:`MAX_HEAD_BYTES` and :data:`HEAD_TIMEOUT` seconds (also the keep-alive
idle limit), no request bodies. aiohttp, used here before, has neither a
connection cap nor a time limit for headers, so a few slow clients could hold
``/healthz`` (and the file handles) for as long as they liked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway import metrics
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.ops.health import HealthCheck, report

log = logging.getLogger("gateway.http")

MAX_CONNECTIONS = 32  # open at once; Prometheus and a probe or two need a handful
HEAD_TIMEOUT = 10.0  # seconds to send a request line and headers (and to start the next request);
# the config key metrics_timeout sets it
MAX_HEAD_BYTES = 8192  # request line and headers together
WRITE_TIMEOUT = 30.0  # seconds for a client to take a response
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    503: "Service Unavailable",
}


class MetricsServer:
    """Serves Prometheus metrics and the health report.

    Args:
        host, port: where to listen (port 0 picks a free one; see ``bound_port``).
        health: coroutine returning the liveness checks (``/healthz``).
        ready: coroutine returning the readiness checks (``/readyz``; default: ``health``).
        max_connections: connections served at once (:data:`MAX_CONNECTIONS`).
        head_timeout: seconds for a request's head (:data:`HEAD_TIMEOUT`).
        registry: what ``/metrics`` renders (default :data:`gateway.metrics.REGISTRY`; a
            supervisor passes one that sums its workers).
    """

    def __init__(
        self,
        host: str,
        port: int,
        health: Callable[[], Awaitable[list[HealthCheck]]],
        *,
        ready: Callable[[], Awaitable[list[HealthCheck]]] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.ready = ready if ready is not None else health
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.registry = registry if registry is not None else metrics.REGISTRY
        self.server: asyncio.Server | None = None
        self.bound_port = port
        self.open = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and serve. Raises OSError when the address cannot be bound."""
        self.server = await asyncio.start_server(
            self._connection, self.host, self.port, reuse_address=True, limit=MAX_HEAD_BYTES
        )
        self.bound_port = int(self.server.sockets[0].getsockname()[1])
        log.info("metrics and health on http://%s:%d/metrics, /healthz and /readyz", self.host, self.bound_port)

    async def stop(self) -> None:
        """Stop listening and close the connections still open."""
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.max_connections:
            writer.transport.abort()  # over the cap: no reply, no waiting
            return
        self.open += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while await self._request(reader, writer):
                pass
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open -= 1
            self.tasks.discard(task)
            writer.transport.abort()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True when the connection may carry another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except asyncio.LimitOverrunError:
            await self._respond(writer, 413, b"request head too large\n", close=True)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._respond(writer, 400, b"bad request line\n", close=True)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
        close = version == "HTTP/1.0" or headers.get("connection") == "close"
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            await self._respond(writer, 400, b"no request body here\n", close=True)
            return False
        if method != "GET":
            await self._respond(writer, 405, b"GET only\n", close=close, extra="Allow: GET\r\n")
            return not close
        path = target.split("?", 1)[0]
        if path == "/metrics":
            # In a thread: the queue gauges list the spool, which takes a while for a large queue
            # and must not stall the SMTP sessions served by the event loop.
            body = await asyncio.to_thread(generate_latest, self.registry)
            await self._respond(writer, 200, body, close=close, content_type=CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            results = await (self.health() if path == "/healthz" else self.ready())
            await self._respond(
                writer, 200 if all(r.ok for r in results) else 503, report(results).encode(), close=close
            )
        else:
            await self._respond(writer, 404, b"/metrics, /healthz or /readyz\n", close=close)
        return not close

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        close: bool,
        content_type: str = "text/plain; charset=utf-8",
        extra: str = "",
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


async def start_metrics_server(
    config: Config,
    health: Callable[[], Awaitable[list[HealthCheck]]],
    ready: Callable[[], Awaitable[list[HealthCheck]]],
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``config.metrics_listen`` (set) with ``metrics_timeout``.

    Raises:
        ConfigError: naming ``metrics_listen`` when the address cannot be bound.
    """
    assert config.metrics_listen is not None
    server = MetricsServer(
        *config.metrics_listen, health=health, ready=ready, head_timeout=config.metrics_timeout, registry=registry
    )
    try:
        await server.start()
    except OSError as error:
        raise ConfigError.unbindable("metrics_listen", "{}:{}".format(*config.metrics_listen), error) from None
    return server
