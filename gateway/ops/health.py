"""Health checks of ``/healthz`` (:func:`liveness`), ``/readyz`` and ``gateway health`` (the container HEALTHCHECK).

Healthy means, as the ServerContainers image's healthcheck: every SMTP
listener accepts TCP connections, the spool is writable (a file can be
created, fsynced and removed in ``spool/tmp``) and has room for one more
message of ``message_size_limit`` above ``queue_minfree``, and the server
certificate is valid for more than 3 days.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from gateway.spool.files import free_bytes

CERTIFICATE_MARGIN = 3 * 86400.0  # seconds a certificate must still be valid


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check's outcome; ``name`` is stable (``listener:smtp``, ``spool``, ``certificate``)."""

    name: str
    ok: bool
    detail: str


def loopback_for(host: str) -> str:
    """The address to ask for a listener bound to ``host``: a wildcard (``0.0.0.0``, ``::``, empty) on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def check_listener(name: str, host: str, port: int, timeout: float = 2.0) -> HealthCheck:
    """Open and close a TCP connection to a listener (wildcard addresses are tried on loopback)."""
    target = loopback_for(host)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), timeout)
    except (TimeoutError, OSError) as error:
        return HealthCheck(f"listener:{name}", False, f"{target}:{port} does not accept connections ({error})")
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return HealthCheck(f"listener:{name}", True, f"{target}:{port} accepts connections")


def check_spool(spool_dir: Path, needed_free: int = 0) -> HealthCheck:
    """Create, fsync and remove a probe file in ``spool/tmp``; at least ``needed_free`` bytes must be free.

    ``needed_free`` is ``queue_minfree`` plus one ``message_size_limit``: below it
    the gateway cannot take one more message of the largest size.
    """
    probe = spool_dir / "tmp" / f".health-{os.getpid()}-{time.monotonic_ns()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"health\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as error:
        return HealthCheck("spool", False, f"{spool_dir} is not writable ({error.strerror})")
    try:
        free = free_bytes(spool_dir)
    except OSError as error:
        return HealthCheck("spool", False, f"{spool_dir}: free space unknown ({error.strerror})")
    if free < needed_free:
        return HealthCheck(
            "spool",
            False,
            f"{spool_dir} has {free} bytes free, less than queue_minfree plus message_size_limit ({needed_free})",
        )
    return HealthCheck("spool", True, f"{spool_dir} is writable, {free} bytes free")


def check_certificate(cert_file: Path | None, now: float | None = None) -> HealthCheck:
    """The server certificate must be valid for more than :data:`CERTIFICATE_MARGIN` seconds."""
    if cert_file is None:
        return HealthCheck("certificate", True, "no TLS listener")
    from gateway.tls.local_ca import certificate_not_after  # imported late: cryptography weighs 9 MB

    try:
        not_after = certificate_not_after(cert_file)
    except (OSError, ValueError) as error:
        return HealthCheck("certificate", False, f"{cert_file} cannot be read ({error})")
    left = not_after.timestamp() - (time.time() if now is None else now)
    when = not_after.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if left <= CERTIFICATE_MARGIN:
        return HealthCheck("certificate", False, f"{cert_file} expires {when} (in {left / 86400:.1f} days)")
    return HealthCheck("certificate", True, f"valid until {when}")


async def liveness(listeners: list[tuple[str, str, int]]) -> list[HealthCheck]:
    """``/healthz``: every listener accepts connections (``listeners`` are (name, host, port))."""
    return list(await asyncio.gather(*(check_listener(n, h, p) for n, h, p in listeners)))


async def run_checks(
    listeners: list[tuple[str, str, int]], spool_dir: Path, cert_file: Path | None, needed_free: int = 0
) -> list[HealthCheck]:
    """All checks; ``listeners`` are (name, host, port); ``needed_free`` bytes (:func:`check_spool`)."""
    results = list(await asyncio.gather(*(check_listener(n, h, p) for n, h, p in listeners)))
    results.append(await asyncio.to_thread(check_spool, spool_dir, needed_free))
    results.append(check_certificate(cert_file))
    return results


def report(results: list[HealthCheck]) -> str:
    """Text lines ``ok|FAIL name: detail`` for humans and /healthz."""
    return "\n".join(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}" for r in results) + "\n"
