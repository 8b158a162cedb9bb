"""The gateway process: build everything from the Config, serve, reload, shut down gracefully.

Start-up order: spool (create, lock, recover) → TLS material (files, or a local
CA and server certificate in ``state_dir/tls``) → pipeline → relay worker →
listeners. Shutdown (SIGTERM/SIGINT): stop accepting, close sessions without an
open transaction with ``421 4.3.2``, let open transactions finish (up to
``shutdown_timeout`` seconds; each session then gets its 421 too), wait for
running spool commits, stop the relay worker, release the spool lock.

Drain (SIGUSR1, or SIGTERM with ``drain_to`` set; :mod:`gateway.ops.drain`):
``/readyz`` turns 503, the listeners stop accepting as at shutdown, delivery
goes on until nothing is left to try or ``drain_timeout`` passes, then what is
still queued is handed to the peer and the process exits. A worker of a
supervisor only stops accepting at SIGUSR1; its supervisor does the rest.

Reload (SIGHUP): the config file is read and validated again through the same
:func:`gateway.prepare.prepare` as at start; an invalid one is refused with a
log line and the running config stays. A valid one brings a new server SSL
context (certificate, key and ``smtpd_tls_CAfile``, so a CA removed from that
file stops verifying): every handshake that starts afterwards uses it, sessions
already encrypted keep theirs. It also replaces the relay client's TLS context,
the policies and their lists and files (header checks, DKIM keys), relay
settings (relayhost, transport_maps, lifetimes, backoff) and limits. Listener
addresses and the spool location need a restart; a change there is logged and
ignored.

As a worker of a supervisor (``role``, :mod:`gateway.workers`) the process takes
neither the spool lock nor part in the full recovery (the supervisor did both):
it requeues what its own ``active.<slot>/`` held, accepts on the sockets the
supervisor bound, gets its share of the gateway-wide limits, leaves ``/metrics``
and ``/healthz`` to the supervisor and reports ready on a pipe.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from pathlib import Path

from gateway import metrics
from gateway.config import Config
from gateway.ops.drain import deliver_until_idle, drain_requested, hand_off_spool
from gateway.ops.health import HealthCheck, liveness
from gateway.ops.http_server import MetricsServer, start_metrics_server
from gateway.ops.lifecycle import lock_and_recover, raise_open_file_limit, serve_until_stopped, unbindable
from gateway.ops.queue_metrics import watch_spool
from gateway.ops.readiness import readiness
from gateway.pipeline.build import Pipelines
from gateway.prepare import Prepared, announce, prepare, prepare_reload
from gateway.relay.client import ConnectionCache, SmtpClient
from gateway.relay.dsn_rate import DSN_COUNT, DsnRateLimit
from gateway.relay.probe import probe_recipient
from gateway.relay.routing import Router
from gateway.relay.worker import RelayWorker
from gateway.resolver import LazyResolver
from gateway.smtpd.connection_limits import ConnectionLimiter
from gateway.smtpd.data_reader import MemoryBudget
from gateway.smtpd.handler import SmtpHandler
from gateway.smtpd.listener import Listener
from gateway.spool import QueueState, Spool
from gateway.spool.batcher import SpoolBatcher
from gateway.spool.intake import Intake
from gateway.tls.context import ServerTls
from gateway.values import NextHop
from gateway.workers.anvil import SharedConnectionLimiter, anvil_path
from gateway.workers.role import WorkerRole, worker_share

log = logging.getLogger("gateway")


DATA_MEMORY_INTERVAL = 0.5  # seconds between updates of gateway_smtp_data_memory_bytes in a worker


class Gateway:
    """One running gateway; ``await Gateway(config).serve()`` runs until a stop signal.

    Args:
        config: the validated configuration.
        shutdown_timeout: seconds open transactions get at SIGTERM.
        config_path: the file SIGHUP re-reads (None: the embedded default).
        role: set when this process is one worker of a supervisor (:mod:`gateway.workers`).
    """

    def __init__(
        self,
        config: Config,
        shutdown_timeout: float = 30.0,
        config_path: Path | None = None,
        role: WorkerRole | None = None,
    ) -> None:
        self.role = role
        config = self._share(config)
        self.config = config
        self.config_path = config_path
        self.server_tls: ServerTls | None = None
        self.shutdown_timeout = shutdown_timeout
        self.spool = Spool(
            config.spool_dir,
            config.spool_sync_method,
            slot=role.slot if role else None,
            in_memory_bytes=config.smtpd_data_spill_size,
        )
        self.listeners: list[Listener] = []
        self.handlers: list[SmtpHandler] = []
        self.worker: RelayWorker | None = None
        self.batcher: SpoolBatcher | None = None
        self.intake: Intake | None = None
        self.worker_task: asyncio.Task[None] | None = None
        self.pipelines: Pipelines | None = None
        self.cert_file: Path | None = None
        self.metrics_server: MetricsServer | None = None
        self.stop_event = asyncio.Event()
        self.draining = False
        self.drain_target: NextHop | None = None
        self.data_budget = MemoryBudget(config.smtpd_data_memory_limit, config.smtpd_data_spill_size)
        self.data_memory_task: asyncio.Task[None] | None = None
        if role is None:
            metrics.DATA_MEMORY.set_function(lambda: self.data_budget.used)

    def _share(self, config: Config) -> Config:
        return worker_share(config, self.role.count) if self.role is not None else config

    async def _publish_data_memory(self) -> None:
        # prometheus-client's multiprocess mode reads values from files: a set_function is never seen.
        while True:
            metrics.DATA_MEMORY.set(self.data_budget.used)
            await asyncio.sleep(DATA_MEMORY_INTERVAL)

    def _use_certificate(self, prepared: Prepared) -> None:
        if self.role is None:  # a supervisor announces them once for all its workers
            announce(prepared)
        self.cert_file = prepared.server_cert
        if prepared.server_cert is not None:
            from gateway.tls.local_ca import certificate_not_after  # cryptography: only with TLS

            metrics.CERT_EXPIRY.labels("server").set(certificate_not_after(prepared.server_cert).timestamp())

    def _listener_addresses(self) -> list[tuple[str, str, int]]:
        return [
            (listener.config.name, listener.config.host, listener.bound_port)
            for listener in self.listeners
            if listener.accepting
        ]

    async def health(self) -> list[HealthCheck]:
        """Liveness (``/healthz``): every listener accepts connections."""
        return await liveness(self._listener_addresses())

    async def ready(self) -> list[HealthCheck]:
        """Readiness (``/readyz``, :func:`gateway.ops.readiness.readiness`)."""
        probes = self.pipelines.readiness_probes() if self.pipelines is not None else []
        return await readiness(
            self._listener_addresses(),
            self.config.spool_dir,
            self.cert_file,
            self.config.queue_minfree + self.config.message_size_limit,
            probes,
            self.draining,
        )

    async def start(self) -> None:
        """Set everything up and start listening.

        Raises:
            ConfigError: bad TLS files or an address that cannot be bound.
            SpoolError: the spool cannot be created or is locked by another process.
        """
        config, role = self.config, self.role
        raise_open_file_limit()
        await asyncio.to_thread(self.spool.create)
        if role is None:
            await lock_and_recover(self.spool)
        else:
            role.die_with_supervisor()
            requeued = await asyncio.to_thread(self.spool.requeue_active)
            log.info(
                "worker %d: %d messages requeued from %s", role.slot, requeued, self.spool.state_dir(QueueState.ACTIVE)
            )
        prepared = prepare(config)
        self._use_certificate(prepared)
        if prepared.server_tls is not None:
            self.server_tls = ServerTls(prepared.server_tls)
        self.pipelines = pipelines = prepared.pipelines
        router = Router(config, LazyResolver(config))
        client = SmtpClient(config, prepared.client_tls, ConnectionCache(config.smtp_connection_cache_time_limit))
        self.router, self.client = router, client
        self._attach_prober(pipelines)
        self.batcher = SpoolBatcher(self.spool, observe_commit=metrics.SPOOL_COMMIT.observe)
        self.worker = RelayWorker(config, self.spool, router, client, self.batcher)
        if role is not None:  # the gateway-wide bounds, shared out (gateway.workers.role)
            self.worker.handoff_limit //= role.count
            self.worker.dsn_rate = DsnRateLimit(math.ceil(DSN_COUNT / role.count))
        self.intake = Intake(self.batcher, self.worker)
        limiter: ConnectionLimiter
        if role is None:
            limiter = ConnectionLimiter(config.smtpd_connection_limit, config.smtpd_client_connection_count_limit)
        else:
            limiter = SharedConnectionLimiter(
                anvil_path(config),
                role.slot,
                role.count,
                config.smtpd_connection_limit,
                config.smtpd_client_connection_count_limit,
            )
            limiter.forget_slot()
        for listener_config in config.listeners:
            handler = SmtpHandler(config, listener_config.name, pipelines, self.intake, tls_mode=listener_config.tls)
            listener = Listener(
                listener_config,
                handler,
                self.server_tls,
                limiter,
                config.smtpd_data_timeout,
                self.data_budget,
                self.spool.tmp_dir,
                config.smtpd_starttls_timeout,
            )
            inherited = role.sockets.get(listener_config.name) if role else None
            if role is not None and inherited is None:
                log.warning(
                    "listener %s: the supervisor bound no socket for it (listener changes need a "
                    "restart of the supervisor); not served",
                    listener_config.name,
                )
                continue
            try:
                await listener.start(inherited)
            except OSError as error:
                raise unbindable(listener_config, error) from None
            self.handlers.append(handler)
            self.listeners.append(listener)
        if role is not None:
            self.data_memory_task = asyncio.create_task(self._publish_data_memory(), name="data-memory")
        else:
            watch_spool(self.spool)
        if config.metrics_listen and role is None:
            self.metrics_server = await start_metrics_server(config, self.health, self.ready)
        self.worker_task = asyncio.create_task(self.worker.run(), name="relay-worker")
        relay = ", ".join(str(h) for h in config.relayhost) or "direct MX"
        listening = " ".join(
            f"{listener.config.name}={listener.config.host}:{listener.bound_port}/{listener.config.tls}"
            for listener in self.listeners
        )
        if role is None:
            log.info("gateway ready: listeners=%s relayhost=%s", listening, relay)
        else:
            log.info("worker %d ready: listeners=%s relayhost=%s", role.slot, listening, relay)
            role.report_ready()

    async def serve(self) -> None:
        """Start, run until SIGTERM/SIGINT (or :meth:`request_stop`), then shut down."""
        await serve_until_stopped(self)

    def _attach_prober(self, pipelines: Pipelines) -> None:
        """Address verification probes through the relay's routing and client (the edge never imports the relay)."""
        if pipelines.recipients is not None:  # called once router and client exist (start, then reloads)
            pipelines.recipients.attach_prober(functools.partial(probe_recipient, self.router, self.client))

    async def reload(self) -> bool:
        """Re-read the config file and apply what can change live (see the module docstring).

        Returns False (and keeps the running config) when the new one is invalid.
        """
        reloaded = prepare_reload(self.config_path, self._share)
        if reloaded is None:
            return False
        config, prepared = reloaded
        if [(listener.name, listener.host, listener.port, listener.tls) for listener in config.listeners] != [
            (listener.name, listener.host, listener.port, listener.tls) for listener in self.config.listeners
        ] or config.spool_dir != self.config.spool_dir:
            log.warning("listener or spool changes need a restart; they are not applied")
        if self.server_tls is not None and prepared.server_tls is not None:
            # A new context, never an update of the live one (its trust store only grows):
            # the next handshake sees exactly the new certificate and smtpd_tls_CAfile.
            self.server_tls.replace(prepared.server_tls)
            self._use_certificate(prepared)
        pipelines = prepared.pipelines
        old = self.pipelines
        self.pipelines = pipelines
        self._attach_prober(pipelines)
        for handler in self.handlers:
            handler.config, handler.pipelines = config, pipelines
        self.data_budget.limit = config.smtpd_data_memory_limit
        self.data_budget.spill_bytes = config.smtpd_data_spill_size
        if self.worker is not None:
            self.worker.config = self.router.config = self.client.config = config
            self.client.tls_context = prepared.client_tls
        self.config = config
        if old is not None:
            asyncio.get_running_loop().call_later(60, lambda: asyncio.ensure_future(old.aclose()))
        log.info("reload done")
        return True

    def request_stop(self) -> None:
        """Ask the gateway to shut down gracefully (to drain first when ``drain_to`` is set)."""
        if self.config.drain_to is not None and self.role is None and not self.draining:
            self.request_drain()
            return
        log.info("stop requested")
        self.stop_event.set()

    def request_drain(self) -> None:
        """SIGUSR1: drain (see the module docstring); a worker only stops accepting and goes on delivering."""
        if self.draining:
            return
        self.draining = True
        if self.role is not None:
            log.info("worker %d: draining: no longer accepting connections", self.role.slot)
            asyncio.ensure_future(self._close_sessions())
            return
        self.drain_target = drain_requested(self.config)
        self.stop_event.set()

    async def _close_sessions(self) -> None:
        """Stop accepting; idle sessions get 421 4.3.2, open transactions finish within ``shutdown_timeout``."""
        for listener in self.listeners:
            listener.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        # Sessions without an open transaction get 421 4.3.2 at once; the others as soon as
        # their transaction ends (after the DATA reply), or are cut at the deadline.
        while loop.time() < deadline:
            open_transactions = [
                session
                for handler in self.handlers
                for session in list(handler.sessions)
                if not session.close_if_idle()
            ]
            if not open_transactions and not any(h.sessions for h in self.handlers):
                break
            await asyncio.sleep(0.05)
        for handler in self.handlers:
            for session in list(handler.sessions):
                if session.transport is not None:
                    session.transport.close()
        commits = list(self.intake.commits) if self.intake is not None else []
        if commits:
            await asyncio.gather(*commits, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.drain()

    async def shutdown(self) -> None:
        """Stop accepting, drain sessions and commits, stop the worker, release the spool.

        When draining: deliver until idle (``drain_timeout``) before the worker stops, and hand
        what is left to the peer before the spool is released.
        """
        await self._close_sessions()
        if self.draining and self.role is None and self.worker_task is not None:
            await deliver_until_idle(self.spool, self.config.drain_timeout)
        if self.worker is not None:
            await self.worker.stop()
        if self.worker_task is not None:
            self.worker_task.cancel()
            await asyncio.gather(self.worker_task, return_exceptions=True)
        if self.pipelines is not None:
            await self.pipelines.aclose()
        if self.draining and self.role is None:
            await hand_off_spool(self.config, self.spool, self.drain_target)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.data_memory_task is not None:
            self.data_memory_task.cancel()
        self.spool.unlock()
        log.info("gateway stopped")
