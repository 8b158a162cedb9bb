"""A gateway process's life around its work: open-file limit, spool lock and recovery, signals.

Shared by the single gateway (:class:`gateway.app.Gateway`) and the supervisor
(:class:`gateway.workers.supervisor.Supervisor`), which must not load the SMTP
stack for it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from typing import Protocol

from gateway.errors import ConfigError
from gateway.spool import Spool
from gateway.values import ListenerConfig

log = logging.getLogger("gateway")


def raise_open_file_limit() -> None:
    """Raise the soft limit of open files to the hard one (each SMTP session and delivery is a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:
            log.warning("open files: soft limit stays %d (%s)", soft, error)
            return
        log.info("open files: soft limit raised from %d to %d", soft, wanted)


async def lock_and_recover(spool: Spool) -> None:
    """Take the spool lock and repair the spool after a crash (:meth:`Spool.recover`), logging what it found.

    Raises:
        SpoolError: the spool is locked by another process.
    """
    spool.lock()
    report = await asyncio.to_thread(spool.recover)
    log.info(
        "spool %s recovered: %d requeued from active, %d temporary files and %d unacknowledged "
        "messages removed, %d corrupt",
        spool.root,
        report.requeued_active,
        report.removed_tmp,
        report.removed_orphan_data,
        len(report.corrupt),
    )


def unbindable(listener: ListenerConfig, error: OSError) -> ConfigError:
    """The error naming ``listener.<name>.address`` when its address cannot be bound."""
    return ConfigError.unbindable(f"listener.{listener.name}.address", f"{listener.host}:{listener.port}", error)


class Service(Protocol):
    """What :func:`serve_until_stopped` runs: a :class:`Gateway` or a supervisor."""

    stop_event: asyncio.Event

    def request_stop(self) -> None: ...
    def request_drain(self) -> None: ...
    async def start(self) -> None: ...
    async def reload(self) -> bool: ...
    async def shutdown(self) -> None: ...


async def serve_until_stopped(service: Service) -> None:
    """Start ``service`` and run it until its ``stop_event`` (SIGTERM, SIGINT), then shut it down.

    SIGHUP runs ``service.reload()``, SIGUSR1 ``service.request_drain()`` (:mod:`gateway.ops.drain`).
    A start that raises is shut down too, then re-raised.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(service.reload()))
    loop.add_signal_handler(signal.SIGUSR1, service.request_drain)
    try:
        await service.start()
        await service.stop_event.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        await service.shutdown()
