"""One SMTP listener: ``address:port`` with a TLS mode, served on the gateway's own loop.

aiosmtpd's ``Controller`` runs its own loop in a thread; the gateway instead
calls ``loop.create_server`` (as ``aiosmtpd.main`` does) so that listeners, the
relay worker and metrics share one loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from functools import partial
from pathlib import Path

from gateway.networks import NetworkSet
from gateway.smtpd.connection_limits import ConnectionLimiter
from gateway.smtpd.data_reader import MemoryBudget
from gateway.smtpd.handler import SmtpHandler
from gateway.smtpd.protocol import GatewaySMTP
from gateway.smtpd.strict_input import InputRules
from gateway.smtpd.upstream_proxy import UpstreamProxy
from gateway.tls.context import ServerTls
from gateway.values import ListenerConfig

log = logging.getLogger("gateway.listener")


class Listener:
    """A listening socket and the SMTP sessions it spawns.

    The socket itself is plain on every listener: TLS (implicit or STARTTLS)
    is started by each session with the context current at that moment, so a
    reload's new certificate and trust reach new handshakes.

    Args:
        config: address, port, TLS mode, require_tls.
        handler: the handler shared by its sessions.
        server_tls: the listeners' current server context; required unless ``config.tls == "none"``.
        limiter: connection counter (shared by all listeners).
        data_timeout: seconds for a whole DATA phase.
        data_budget: memory for message text, shared by all listeners' sessions.
        spill_dir: where a large message is kept while it arrives (the spool's ``tmp/``).
        tls_handshake_timeout: seconds for an implicit-TLS handshake (``smtpd_starttls_timeout``).
    """

    def __init__(
        self,
        config: ListenerConfig,
        handler: SmtpHandler,
        server_tls: ServerTls | None,
        limiter: ConnectionLimiter,
        data_timeout: float,
        data_budget: MemoryBudget | None = None,
        spill_dir: Path | None = None,
        tls_handshake_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.handler = handler
        self.server_tls = server_tls
        self.limiter = limiter
        self.data_timeout = data_timeout
        self.data_budget = data_budget
        self.spill_dir = spill_dir
        self.tls_handshake_timeout = tls_handshake_timeout
        self.server: asyncio.Server | None = None

    def _protocol(self) -> GatewaySMTP:
        return GatewaySMTP(
            self.handler,
            limiter=self.limiter,
            tls_mode=self.config.tls,
            server_tls=self.server_tls,
            data_timeout=self.data_timeout,
            data_budget=self.data_budget,
            spill_dir=self.spill_dir,
            tls_handshake_timeout=self.tls_handshake_timeout,
            input_rules=self._input_rules(),
            upstream_proxy=self._upstream_proxy(),
            require_starttls=self.config.tls == "starttls" and self.config.require_tls,
            loop=asyncio.get_running_loop(),
            **self._smtp_options(),
        )

    def _input_rules(self) -> InputRules:
        config = self.handler.config  # the live one: a reload replaces it
        return InputRules(
            junk_command_limit=config.smtpd_junk_command_limit,
            forbid_unauth_pipelining=config.smtpd_forbid_unauth_pipelining,
            pregreet_wait=config.smtpd_pregreet_wait,
        )

    def _upstream_proxy(self) -> UpstreamProxy | None:
        if not self.config.upstream_proxy_protocol:
            return None
        config = self.handler.config  # the live one: a reload replaces it
        return UpstreamProxy(NetworkSet(config.upstream_proxy_networks), config.smtpd_upstream_proxy_timeout)

    def _smtp_options(self) -> dict[str, object]:
        """aiosmtpd ``SMTP`` keyword arguments common to the listener's connections."""
        config = self.handler.config  # the live one: a reload replaces it
        return {
            "data_size_limit": config.message_size_limit,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "hostname": config.myhostname,
            "ident": "ESMTP",
            "timeout": config.smtpd_timeout,
        }

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and start accepting, or accept on ``sock`` (a listening socket bound by the supervisor).

        Raises:
            OSError: when the address cannot be bound (the caller names the listener).
        """
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.server = await loop.create_server(partial(self._protocol), sock=sock, start_serving=True)
        else:
            self.server = await loop.create_server(
                partial(self._protocol),
                host=self.config.host,
                port=self.config.port,
                reuse_address=True,
                start_serving=True,
            )
        log.info(
            "listener %s on %s:%d tls=%s%s",
            self.config.name,
            self.config.host,
            self.bound_port,
            self.config.tls,
            " require_tls" if self.config.require_tls else "",
        )

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful when configured as 0)."""
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def accepting(self) -> bool:
        """True until :meth:`stop_accepting` (or before :meth:`start`: False)."""
        return self.server is not None and self.server.is_serving()

    def stop_accepting(self) -> None:
        """Close the listening socket; open sessions go on."""
        if self.server is not None:
            self.server.close()
