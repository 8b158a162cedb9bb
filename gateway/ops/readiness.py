"""Readiness (``GET /readyz``): may a load balancer send this gateway mail right now?

Ready means every check of ``/healthz``'s fuller sibling passes
(:func:`gateway.ops.health.run_checks`: listeners accept, the spool is writable
with room for one more message of ``message_size_limit`` above
``queue_minfree``, the certificate is valid for more than 3 days), the gateway
is not draining (:mod:`gateway.ops.drain`), and every fail-closed scanner
answers its ping (:class:`gateway.pipeline.policy.ScannerProbe`: clamd
``zPING``, spamd ``PING``, rspamd ``/ping``). A scanner that is down would make
this gateway answer 451 to every message; not ready, the balancer sends the
mail to a replica that can scan. The probes run at each request (a balancer
asks every few seconds; one ping is one short connection).

``/healthz`` is liveness only (the listeners accept): a restart fixes neither
a full disk nor an expiring certificate nor a scanner that is down.

A supervisor never builds the policies: the ``--prepare`` child writes the
probes to ``state_dir/readiness-probes.json`` (:func:`save_probes`), which the
supervisor reads (:func:`load_probes`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

from gateway.ops.health import HealthCheck, loopback_for, run_checks
from gateway.pipeline.policy import ScannerProbe

PROBE_TIMEOUT = 2.0  # seconds for one scanner to answer its ping
MAX_ANSWER_BYTES = 4096  # read of a ping answer
PROBES_FILE = "readiness-probes.json"


async def probe_scanner(probe: ScannerProbe, timeout: float = PROBE_TIMEOUT) -> HealthCheck:
    """Send the probe's request and look for its expected answer within ``timeout`` seconds (never raises)."""
    name = f"scanner:{probe.policy}"
    try:
        answer = await asyncio.wait_for(_ask(probe), timeout)
    except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as error:
        why = f"no answer within {timeout:g}s" if isinstance(error, asyncio.TimeoutError) else str(error)
        return HealthCheck(name, False, f"{probe.target} does not answer ({why})")
    if probe.expect not in answer:
        return HealthCheck(name, False, f"{probe.target} answered {answer[:80]!r}, not {probe.expect!r}")
    return HealthCheck(name, True, f"{probe.target} answers")


async def _ask(probe: ScannerProbe) -> bytes:
    if probe.path is not None:
        reader, writer = await asyncio.open_unix_connection(probe.path)
    else:
        context = ssl.create_default_context() if probe.tls else None
        reader, writer = await asyncio.open_connection(probe.host, probe.port, ssl=context)
    try:
        writer.write(probe.request)
        await writer.drain()
        answer = b""
        while probe.expect not in answer and len(answer) < MAX_ANSWER_BYTES:
            piece = await reader.read(MAX_ANSWER_BYTES)
            if not piece:
                break
            answer += piece
        return answer
    finally:
        writer.close()


async def readiness(
    listeners: list[tuple[str, str, int]],
    spool_dir: Path,
    cert_file: Path | None,
    needed_free: int,
    probes: list[ScannerProbe],
    draining: bool,
) -> list[HealthCheck]:
    """Every readiness check: ``draining`` first, then :func:`run_checks`'s, then each scanner's."""
    checks = [
        HealthCheck(
            "draining", not draining, "draining: handing over, takes no new mail" if draining else "taking mail"
        )
    ]
    checks += await run_checks(listeners, spool_dir, cert_file, needed_free)
    checks += await asyncio.gather(*(probe_scanner(probe) for probe in probes))
    return checks


def save_probes(state_dir: Path, probes: list[ScannerProbe]) -> None:
    """Write ``probes`` for a supervisor (atomically: the supervisor may be reading the old file)."""
    rows = [
        {
            "policy": p.policy,
            "target": p.target,
            "request": p.request.decode("latin-1"),
            "expect": p.expect.decode("latin-1"),
            "path": p.path,
            "host": p.host,
            "port": p.port,
            "tls": p.tls,
        }
        for p in probes
    ]
    path = state_dir / PROBES_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(path)


def load_probes(state_dir: Path) -> list[ScannerProbe]:
    """The probes :func:`save_probes` wrote; none when the file is missing or damaged."""
    try:
        rows = json.loads((state_dir / PROBES_FILE).read_text())
        return [
            ScannerProbe(
                policy=str(r["policy"]),
                target=str(r["target"]),
                request=str(r["request"]).encode("latin-1"),
                expect=str(r["expect"]).encode("latin-1"),
                path=r["path"],
                host=r["host"],
                port=r["port"],
                tls=bool(r["tls"]),
            )
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def ask_running_gateway(address: tuple[str, int], timeout: float = 8.0) -> tuple[int, str] | None:
    """``GET /readyz`` of the gateway serving ``metrics_listen`` = ``address``: (status, body), None if none answers.

    For ``gateway health`` (the container HEALTHCHECK): only the running process knows
    whether it drains and what its scanners answer. A wildcard address is asked on loopback.
    """
    import http.client

    host = loopback_for(address[0])
    connection = http.client.HTTPConnection(host, address[1], timeout=timeout)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
