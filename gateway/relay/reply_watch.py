"""Act on a next hop's reply to the end of data in the transport's own callback (issue 17).

The 250 after the message makes its recipients delivered; until the worker has
marked them (:mod:`gateway.spool.marks`), a crash delivers them again. Awaited
the usual way, the reply reaches the worker two turns of the event loop after
its bytes came in: the transport hands them to aiosmtplib's protocol, which
resolves a future, whose task runs in the next batch of ready callbacks. Under
load (inbound sessions, twenty deliveries) that second wait was 0.8 ms median,
2-4 ms at p90-p99, on this project's test machine, and every delivery whose
250 arrived in it was repeated by a crash then.

:func:`watch_final_reply` puts a thin protocol between the transport and
aiosmtplib's (``transport.set_protocol``, supported by asyncio's and uvloop's
plain and TLS transports) for the one reply after the end of data. Each chunk
is handed on unchanged; the moment aiosmtplib has parsed the reply, a 2xx calls
``on_success`` right there, in the same callback, before any other task runs.
It reads aiosmtplib's response future (``_response_waiter``, a private name; the
version is pinned in requirements.lock): the reply seen is then exactly the one
the awaiting task gets. Should that name go away, nothing is called early and
the worker marks after the await, as before (tests/unit/relay/test_end_of_data_mark.py
fails then).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtplib.protocol import SMTPProtocol

log = logging.getLogger("gateway.relay")

OnSuccess = Callable[[], None]


class _FinalReplyWatcher(asyncio.Protocol):
    """Stands in for ``inner`` at the transport: hands everything on, calls ``on_success`` once at a 2xx."""

    def __init__(self, inner: SMTPProtocol, on_success: OnSuccess) -> None:
        self.inner = inner
        self.on_success: OnSuccess | None = on_success

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)
        if self.on_success is None:
            return
        waiter: asyncio.Future[Any] | None = getattr(self.inner, "_response_waiter", None)
        if waiter is None or not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
            return
        if 200 <= waiter.result().code < 300:
            on_success, self.on_success = self.on_success, None
            try:
                on_success()
            except Exception:  # never into the transport: the task still gets the reply and marks then
                log.exception("could not act on a reply to the end of data")

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


@contextmanager
def watch_final_reply(
    protocol: SMTPProtocol, transport: asyncio.BaseTransport, on_success: OnSuccess | None
) -> Iterator[None]:
    """While inside, a 2xx reply parsed by ``protocol`` calls ``on_success()`` (at most once) from the
    transport's data callback; exceptions it raises are logged, never raised. Enter right before writing
    the end of data; ``on_success=None`` changes nothing."""
    if on_success is None:
        yield
        return
    transport.set_protocol(_FinalReplyWatcher(protocol, on_success))
    try:
        yield
    finally:
        transport.set_protocol(protocol)
