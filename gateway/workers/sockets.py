"""The supervisor's listening sockets: one per listener and worker, all on the listener's address (SO_REUSEPORT).

With ``SO_REUSEPORT`` the kernel spreads new connections over the sockets of
one address by a hash of the client's address and port, instead of waking
every worker for each connection on one shared socket (whichever worker is
fastest would then take most of them). The supervisor keeps its copy of every
socket open, so while a worker restarts its socket goes on queueing
connections (up to the backlog) instead of refusing them.
"""

from __future__ import annotations

import socket

from gateway.values import ListenerConfig

BACKLOG = 100  # connections queued per socket (asyncio's create_server default)


def bind_listener(listener: ListenerConfig, count: int) -> list[socket.socket]:
    """``count`` listening TCP sockets on ``listener.host:listener.port`` (port 0: one free port for all).

    Raises:
        OSError: when the address cannot be bound or resolved (the caller names the listener).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        listener.host or None, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's create_server
            sock.bind(address)
            sock.listen(BACKLOG)
            address = sock.getsockname()  # port 0: the others take the port the first one got
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
