"""Free TCP ports for test servers, picked outside the kernel's ephemeral range.

A port found free by binding port 0 comes from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 here), the same
range the kernel draws from for every outgoing connection. Between the pick
and the moment the gateway or a daemon binds it, any client socket of the test
run (smtplib, a relay connection, a readiness probe) may be given that very
port, and the start fails with "address already in use". Ports below the
ephemeral range are never handed out that way; a random one of them, checked
by binding it, can only collide with another test run picking at the same
moment.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10000  # below this: well-known and registered services a machine may run
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_pick = random.Random()


def _candidates() -> range:
    """Ports outside the ephemeral range: below it, or above it when it starts low."""
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(_LOWEST, low) if low - _LOWEST >= 1000 else range(high + 1, 65536)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago (outside the ephemeral range).

    Raises:
        OSError: when no ``count`` free ports were found in 1000 tries.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = _candidates()
    held: list[socket.socket] = []
    try:
        for _ in range(1000):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.bind((host, _pick.choice(candidates)))  # a port already held fails here too
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                return [int(held_sock.getsockname()[1]) for held_sock in held]
    finally:
        for sock in held:
            sock.close()
    raise OSError(f"no {count} free TCP ports on {host} in {candidates}")


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port that was free on ``host`` a moment ago (see :func:`free_ports`)."""
    return free_ports(1, host)[0]
