"""The supervisor of a gateway with ``workers`` > 1: one spool, N worker processes, one /metrics.

Start: take the spool lock, recover the spool, build everything once through
:func:`gateway.prepare.prepare` in a short-lived child (``gateway run --prepare
start``: a bad config exits here with its error; the local CA and new DKIM keys
are written by that one process, never raced by the workers; the supervisor
itself never loads the SMTP stack, the policies or cryptography, which keeps
it at about half a worker's memory), clear the metrics directory, bind every listener
(:mod:`gateway.workers.sockets`), start the workers and wait until each says it
serves, then serve ``/metrics``, ``/healthz`` and ``/readyz`` and log ``gateway ready``.

A worker that dies is logged and started again in its slot after a backoff (1 s,
doubling up to 30 s while it keeps dying within 30 s of its start); the new one
first requeues what its slot's ``active.<slot>/`` held. SIGHUP is checked
first by a ``--prepare reload`` child (an invalid config is refused once, for
all) and then passed to every worker; SIGTERM/SIGINT is passed to every worker, each drains as a single
gateway does, and the supervisor exits 0 once all have. Workers are killed by
the kernel if the supervisor dies (:meth:`WorkerRole.die_with_supervisor`).

Drain (SIGUSR1, or SIGTERM with ``drain_to``; :mod:`gateway.ops.drain`): ``/readyz``
turns 503, every worker gets SIGUSR1 and stops accepting, the supervisor closes
its copies of the listening sockets, delivery goes on until nothing is left to
try or ``drain_timeout`` passes, the workers are stopped as at SIGTERM, and the
supervisor, which holds the spool lock, hands what is left to the peer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gateway import metrics
from gateway.config import Config, load
from gateway.errors import ChildFailed, GatewayError
from gateway.ops.drain import deliver_until_idle, drain_requested, hand_off_spool
from gateway.ops.health import HealthCheck, liveness
from gateway.ops.http_server import MetricsServer, start_metrics_server
from gateway.ops.lifecycle import lock_and_recover, raise_open_file_limit, serve_until_stopped, unbindable
from gateway.ops.queue_metrics import SpoolCollector
from gateway.ops.readiness import load_probes, readiness
from gateway.pipeline.policy import ScannerProbe
from gateway.prepare import server_certificate_file
from gateway.spool import Spool
from gateway.values import NextHop
from gateway.workers.anvil import anvil_path, create_table
from gateway.workers.sockets import bind_listener

log = logging.getLogger("gateway.supervisor")

READY_TIMEOUT = 60.0  # seconds for a worker to start serving
RESTART_DELAY_MIN = 1.0  # seconds before a dead worker is started again ...
RESTART_DELAY_MAX = 30.0  # ... doubling up to this while it keeps dying young
STABLE_AFTER = 30.0  # seconds of life after which a death starts the backoff afresh
STOP_TIMEOUT = 60.0  # seconds a worker gets to drain at SIGTERM before SIGKILL
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(slots=True)
class _Slot:
    number: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0  # loop time of the current process's start
    delay: float = RESTART_DELAY_MIN
    task: asyncio.Task[None] | None = None


def describe_exit(returncode: int) -> str:
    """``"status 3"`` or ``"signal 9 (SIGKILL)"`` for a child's ``returncode``."""
    if returncode < 0:
        try:
            return f"signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


class WorkerMetrics(Collector):
    """Every worker's metrics summed (prometheus-client's multiprocess files under ``path``).

    A metric no worker has touched yet has no file: it is declared from
    :data:`gateway.metrics.REGISTRY` (this process's own, untouched copy), as a
    single gateway process would show it (labelled: no samples; plain: zero), so
    dashboards and alerts find every name from the start.
    """

    def __init__(self, path: Path) -> None:
        self.summed = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for family in self.summed.collect():  # type: ignore[no-untyped-call]
            seen.add(family.name)
            yield family
        for family in metrics.REGISTRY.collect():
            if family.name.startswith(f"{metrics.PREFIX}_") and family.name not in seen:
                yield family


class Supervisor:
    """Runs ``config.workers`` gateway workers; ``await Supervisor(config).serve()`` returns the exit status.

    Args:
        config: the validated configuration (``workers`` > 1).
        config_path: the file the workers load and SIGHUP re-reads (None: the embedded default).
    """

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.spool = Spool(config.spool_dir, config.spool_sync_method)
        self.metrics_dir = config.state_dir / "metrics"
        self.sockets: dict[str, list[socket.socket]] = {}
        self.slots = [_Slot(number) for number in range(config.workers)]
        self.stop_event = asyncio.Event()
        self.stopping = False
        self.cert_file: Path | None = None
        self.metrics_server: MetricsServer | None = None
        self.probes: list[ScannerProbe] = []
        self.draining = False
        self.drain_target: NextHop | None = None

    # ---- start ----

    async def start(self) -> None:
        """Lock and recover the spool, prepare, bind, start every worker, serve /metrics.

        Raises:
            ConfigError: a bad config or an address that cannot be bound.
            SpoolError: the spool cannot be created or is locked by another process.
            GatewayError: a worker did not start.
        """
        config = self.config
        raise_open_file_limit()  # it holds a socket per listener and worker
        await asyncio.to_thread(self.spool.create)
        await lock_and_recover(self.spool)
        status = await self._prepare("start")
        if status != 0:
            # the child's own status (2: configuration error); 1 when a signal ended it
            raise ChildFailed("preparing the configuration failed (see above)", status if status > 0 else 1)
        self.cert_file = server_certificate_file(config)
        self.probes = load_probes(config.state_dir)
        self._clear_metrics_dir()
        create_table(anvil_path(config), config.workers)  # counts of an earlier run are stale
        for listener in config.listeners:
            try:
                self.sockets[listener.name] = bind_listener(listener, config.workers)
            except OSError as error:
                raise unbindable(listener, error) from None
        started = await asyncio.gather(*(self._start_worker(slot) for slot in self.slots))
        for slot, ready in zip(self.slots, started):
            if not ready:
                raise GatewayError(f"worker {slot.number} did not start (see its log lines above)")
        for slot in self.slots:
            slot.task = asyncio.create_task(self._keep_running(slot), name=f"worker-{slot.number}")
        if config.metrics_listen:
            self.metrics_server = await start_metrics_server(config, self.health, self.ready, self._registry())
        relay = ", ".join(str(h) for h in config.relayhost) or "direct MX"
        log.info(
            "gateway ready: workers=%d (pids %s) listeners=%s relayhost=%s",
            len(self.slots),
            " ".join(str(slot.process.pid) for slot in self.slots if slot.process is not None),
            " ".join(
                f"{listener.name}={listener.host}:{self._port(listener.name)}/{listener.tls}"
                for listener in config.listeners
            ),
            relay,
        )

    def _clear_metrics_dir(self) -> None:
        # Owned by this supervisor: files of an earlier run would be summed with ours.
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(mode=0o700, parents=True)

    def _registry(self) -> CollectorRegistry:
        registry = CollectorRegistry()
        registry.register(WorkerMetrics(self.metrics_dir))
        registry.register(SpoolCollector(self.spool))
        ProcessCollector(registry=registry)  # the supervisor's own; each worker's are not summed
        return registry

    def _port(self, listener: str) -> int:
        return int(self.sockets[listener][0].getsockname()[1])

    def _gateway_command(self) -> list[str]:
        command = [sys.executable, "-m", "gateway"]
        if self.config_path is not None:
            command += ["-c", str(self.config_path)]
        return command

    async def _prepare(self, mode: str) -> int:
        """Run ``gateway run --prepare MODE`` (``start`` or ``reload``) and return its exit status.

        The child builds and checks everything (:func:`gateway.prepare.prepare`),
        writes the local CA and missing DKIM keys, logs what to publish, and exits;
        its log lines and errors go to this process's stderr.
        """
        process = await asyncio.create_subprocess_exec(
            *self._gateway_command(), "run", "--prepare", mode, stdin=asyncio.subprocess.DEVNULL
        )
        return await process.wait()

    def _command(self, slot: _Slot, ready_fd: int) -> list[str]:
        command = self._gateway_command()
        command += [
            "run",
            "--worker",
            f"{slot.number}/{len(self.slots)}",
            "--supervisor",
            str(os.getpid()),
            "--ready-fd",
            str(ready_fd),
        ]
        for name, sockets in self.sockets.items():
            command.append(f"--listen-fd={name}={sockets[slot.number].fileno()}")
        return command

    async def _start_worker(self, slot: _Slot) -> bool:
        """Start the worker of ``slot`` and wait until it serves; False when it did not (it is then stopped)."""
        loop = asyncio.get_running_loop()
        ready_read, ready_write = os.pipe()
        inherited = [ready_write, *(sockets[slot.number].fileno() for sockets in self.sockets.values())]
        try:
            slot.process = await asyncio.create_subprocess_exec(
                *self._command(slot, ready_write),
                pass_fds=inherited,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, METRICS_ENV: str(self.metrics_dir)},
            )
        finally:
            os.close(ready_write)
        slot.started = loop.time()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(ready_read, "rb", buffering=0)
        )
        try:
            ready = await asyncio.wait_for(reader.read(1), READY_TIMEOUT) == b"1"
        except TimeoutError:
            ready = False
        finally:
            transport.close()
        if not ready and slot.process.returncode is None:
            log.error("worker %d (pid %d) not ready within %gs; killed", slot.number, slot.process.pid, READY_TIMEOUT)
            slot.process.kill()
            await slot.process.wait()
        return ready

    async def _keep_running(self, slot: _Slot) -> None:
        """Wait for the slot's worker to exit; unless stopping, start it again after the backoff."""
        loop = asyncio.get_running_loop()
        while not self.stopping and slot.process is not None:
            returncode = await slot.process.wait()
            if self.stopping:
                return
            pid = slot.process.pid
            # its live gauges go; its counters stay summed
            mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            lived = loop.time() - slot.started
            slot.delay = RESTART_DELAY_MIN if lived >= STABLE_AFTER else slot.delay
            log.error(
                "worker %d (pid %d) exited with %s after %.1fs; restarting in %gs",
                slot.number,
                pid,
                describe_exit(returncode),
                lived,
                slot.delay,
            )
            try:
                await asyncio.wait_for(self.stop_event.wait(), slot.delay)
                return  # stopping meanwhile
            except TimeoutError:
                pass
            slot.delay = min(slot.delay * 2, RESTART_DELAY_MAX)
            if await self._start_worker(slot):
                log.info("worker %d restarted (pid %d)", slot.number, slot.process.pid)

    # ---- run ----

    async def serve(self) -> int:
        """Start, run until SIGTERM/SIGINT (or :meth:`request_stop`), stop every worker; returns 0."""
        await serve_until_stopped(self)
        return 0

    def _listener_addresses(self) -> list[tuple[str, str, int]]:
        return [
            (listener.name, listener.host, self._port(listener.name))
            for listener in self.config.listeners
            if self.sockets.get(listener.name)
        ]

    async def health(self) -> list[HealthCheck]:
        """Liveness of the whole gateway (``/healthz``): every listener accepts."""
        return await liveness(self._listener_addresses())

    async def ready(self) -> list[HealthCheck]:
        """Readiness of the whole gateway (``/readyz``, :func:`gateway.ops.readiness.readiness`)."""
        return await readiness(
            self._listener_addresses(),
            self.config.spool_dir,
            self.cert_file,
            self.config.queue_minfree + self.config.message_size_limit,
            self.probes,
            self.draining,
        )

    async def reload(self) -> bool:
        """Check the config file once, then have every worker reload it (SIGHUP); False when refused."""
        try:
            config = load(self.config_path)  # a file that does not parse is refused here, cheaply
        except GatewayError as error:
            log.error("reload refused, keeping the running configuration: %s", error)
            return False
        # the child builds everything, writes new DKIM keys once, before the workers read them, and
        # logs its own refusal
        if await self._prepare("reload") != 0:
            return False
        if config.workers != self.config.workers or [
            (listener.name, listener.host, listener.port, listener.tls) for listener in config.listeners
        ] != [(listener.name, listener.host, listener.port, listener.tls) for listener in self.config.listeners]:
            log.warning("changes of workers or listeners need a restart; they are not applied")
        self.cert_file = server_certificate_file(config)
        self.probes = load_probes(config.state_dir)
        self.config = config
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGHUP)
        log.info("reload passed to %d workers", len(self.slots))
        return True

    def request_stop(self) -> None:
        """Ask the gateway to shut down gracefully (to drain first when ``drain_to`` is set)."""
        if self.config.drain_to is not None and not self.draining:
            self.request_drain()
            return
        log.info("stop requested")
        self.stop_event.set()

    def request_drain(self) -> None:
        """SIGUSR1: drain (see the module docstring)."""
        if self.draining:
            return
        self.draining = True
        self.drain_target = drain_requested(self.config)
        self.stop_event.set()

    def _running(self) -> list[asyncio.subprocess.Process]:
        return [slot.process for slot in self.slots if slot.process is not None and slot.process.returncode is None]

    def _close_sockets(self) -> None:
        for sockets in self.sockets.values():
            for sock in sockets:
                sock.close()
        self.sockets.clear()

    async def shutdown(self) -> None:
        """SIGTERM every worker, wait for each to drain (SIGKILL after STOP_TIMEOUT), release the spool.

        When draining: first the workers stop accepting (SIGUSR1) and deliver until idle
        (``drain_timeout``); after they exit, what is left is handed to the peer.
        """
        self.stopping = True
        self.stop_event.set()
        # No restart from here on: a slot caught starting a worker keeps it in slot.process.
        for slot in self.slots:
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(*(slot.task for slot in self.slots if slot.task is not None), return_exceptions=True)
        if self.draining:
            for process in self._running():
                process.send_signal(signal.SIGUSR1)
            self._close_sockets()
            await deliver_until_idle(self.spool, self.config.drain_timeout)
        running = self._running()
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.error("worker pid %d still running %gs after SIGTERM; killed", process.pid, STOP_TIMEOUT)
                process.kill()
                await process.wait()
        self._close_sockets()
        if self.draining:
            await hand_off_spool(self.config, self.spool, self.drain_target)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        self.spool.unlock()
        log.info("gateway stopped")
