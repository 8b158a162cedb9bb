"""The interface every check in ``policies/`` implements.

A policy is built once from the configuration and shared by all sessions; it
keeps per-message state in locals only. It has one async hook per SMTP stage
and returns a :class:`~gateway.verdict.Verdict`. Hooks must not block the event
loop (run blocking libraries in ``asyncio.to_thread``). A hook may raise: the
pipeline turns an exception or a timeout into a temporary failure (fail-closed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

from gateway.config import Config
from gateway.envelope import ClientInfo, Envelope
from gateway.verdict import CONTINUE, Verdict


@dataclass(frozen=True, slots=True)
class ScannerProbe:
    """How ``/readyz`` asks a scanner whether it answers: send ``request``, expect ``expect`` in the answer.

    policy: the policy's name (``scanner:<policy>`` in the report). target: for people
    (``unix:/run/clamav/clamd.ctl``, ``127.0.0.1:783``). Either ``path`` (a Unix socket) or
    ``host`` and ``port``; ``tls`` wraps the TCP connection (an https rspamd URL).
    """

    policy: str
    target: str
    request: bytes
    expect: bytes
    path: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool = False


@dataclass(slots=True)
class PolicyContext:
    """What a policy may look at: the client, the envelope so far, the queue ID once known."""

    client: ClientInfo
    envelope: Envelope | None = None
    queue_id: str | None = None
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("gateway.policy")
    )


class Policy:
    """Base class with no-op hooks: subclass and override the stages you need.

    Class attribute ``name`` is the config key, log field and metric label.
    ``scanner`` is ``"virus"`` or ``"spam"`` for the content scanners: they run
    concurrently at DATA and ``[content_filter]``'s switches and bypass lists
    turn them off; None for every other check.
    """

    name: ClassVar[str] = "policy"
    scanner: ClassVar[str | None] = None

    def __init__(self, config: Config | None = None) -> None:
        """Policies are built once with the whole Config and read their own ``[name]`` table."""

    async def on_connect(self, ctx: PolicyContext) -> Verdict:
        """After the TCP (and implicit TLS) connection is set up."""
        return CONTINUE

    async def on_helo(self, ctx: PolicyContext, helo: str) -> Verdict:
        """At HELO/EHLO with the announced name."""
        return CONTINUE

    async def on_mail(self, ctx: PolicyContext, sender: str) -> Verdict:
        """At MAIL FROM; ``sender`` is ``""`` for the null sender."""
        return CONTINUE

    async def on_rcpt(self, ctx: PolicyContext, recipient: str) -> Verdict:
        """At each RCPT TO; some policy must ACCEPT or the recipient is refused (default deny)."""
        return CONTINUE

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        """After the end of data, with the raw message bytes as received (CRLF, dot-unstuffed)."""
        return CONTINUE

    def readiness_probe(self) -> ScannerProbe | None:
        """How ``/readyz`` checks the service this policy needs; None when there is none to check.

        A scanner whose failures tempfail mail (``on_error = "tempfail"``) returns one:
        while it does not answer, the gateway is not ready (a balancer then sends mail
        to a replica that can scan, instead of this one answering 451 to everyone).
        """
        return None

    async def aclose(self) -> None:
        """Release connections or threads at shutdown."""
