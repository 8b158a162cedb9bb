"""A real SMTP server that plays the relayhost or a destination MX in tests.

`SmtpSink` runs aiosmtpd in a thread of the pytest process (aiosmtpd
``Controller``), so synchronous tests can start it, point the gateway
subprocess at ``sink.port``, and then inspect what arrived::

    with SmtpSink() as sink:
        sink.rcpt_replies["bob@example.org"] = ["451 4.3.0 try later"]
        ...                                   # run the gateway against sink.port
        [msg] = sink.wait_for_messages(1)
        assert msg.data == expected_bytes
        assert sink.delivered == {"bob@example.org": 1}

Replies can be scripted per recipient (``rcpt_replies``), per DATA
(``data_replies``) or for every MAIL (``refuse_all``). A scripted reply that
starts with ``421`` closes the connection after it is sent, as a real server
does (RFC 5321 §3.8).

The socket is bound in the constructor, so ``.port`` is known before
``start()``; until then (and after ``stop()``) connections are refused, which
is how a test plays "relayhost down". ``start()`` after ``stop()`` listens on
the same port again.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["ReceivedMessage", "SmtpSink"]

DEFAULT_RCPT_OK = "250 2.1.5 Ok"
DEFAULT_DATA_OK = "250 2.0.0 Ok queued"
DEFAULT_MAIL_OK = "250 2.1.0 Ok"
DATA_SIZE_LIMIT = 100 * 1024 * 1024  # bytes


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the sink accepted with a 2xx reply to DATA.

    Attributes:
        mail_from: reverse-path as given; ``""`` for the null sender ``<>``.
        rcpt_tos: accepted recipients of this transaction, as given (case kept).
        data: the message exactly as received (CRLF line ends, dot-unstuffed;
            aiosmtpd ``envelope.original_content``).
        peer: the client's socket address, e.g. ``("127.0.0.1", 54321)``.
        tls: True when the transaction ran after STARTTLS.
        auth_user: the SMTP AUTH user name, or None if the client did not log in.
        mail_options: MAIL FROM parameters, upper-cased by aiosmtpd
            (e.g. ``["SIZE=123", "BODY=8BITMIME", "SMTPUTF8"]``).
        helo: the EHLO/HELO name the client gave in this session.
        rcpt_params: with ``dsn=True``, each accepted recipient's RFC 3461 parameters as sent
            (e.g. ``{"a@b": ["NOTIFY=SUCCESS", "ORCPT=rfc822;x+40y"]}``); MAIL's are in ``mail_options``.
        accepted_at: ``time.monotonic()`` when the sink took the message, right before its 250 to DATA.
    """

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: tuple[Any, ...]
    tls: bool
    auth_user: str | None
    mail_options: list[str]
    helo: str | None = None
    rcpt_params: dict[str, list[str]] | None = None
    accepted_at: float = 0.0


class _SinkController(Controller):
    """aiosmtpd ``Controller`` that serves on a socket bound by the caller.

    Binding ourselves gives port 0 → free port without the race of "find a free
    port, close it, let the Controller bind it again".
    """

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)

    def factory(self) -> SMTP:
        if getattr(self.handler, "dsn", False):
            return _DsnSMTP(self.handler, **self.SMTP_kwargs)
        return super().factory()  # type: ignore[no-any-return]


_DSN_PARAMETER = re.compile(r"[ \t]+((?:RET|ENVID|NOTIFY|ORCPT)=\S*)", re.IGNORECASE)


class _DsnSMTP(SMTP):
    """A server that offers DSN (RFC 3461): its parameters are taken out before aiosmtpd (which refuses them
    with 555) and kept, as sent, for the handler."""

    dsn_taken: list[str]

    def _take(self, arg: str | None) -> str | None:
        self.dsn_taken = _DSN_PARAMETER.findall(arg or "")
        return _DSN_PARAMETER.sub("", arg) if arg else arg

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._take(arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._take(arg))


class SmtpSink:
    """A scriptable SMTP server on loopback that records what it accepts.

    Args:
        host: address to bind, ``"127.0.0.1"`` or ``"::1"``.
        port: TCP port; 0 picks a free one (read it back from ``.port``).
        tls_context: server-side context; when given, STARTTLS is offered
            (e.g. ``trustme.CA().issue_cert("sink.test", "127.0.0.1")
            .configure_cert(ctx)``).
        auth: user name → password; when given, AUTH PLAIN and LOGIN are offered
            (only after STARTTLS unless ``auth_require_tls=False``) and the user
            is recorded in ``ReceivedMessage.auth_user``.
        auth_require_tls: offer AUTH only on a TLS connection (aiosmtpd default).
        auth_required: refuse MAIL/RCPT/DATA with ``530 5.7.0`` until the client
            has authenticated.
        server_hostname: name in the banner and EHLO reply (never
            ``socket.getfqdn()``, which can take seconds).

    Scripting (set from the test thread at any time; consumed by the sink thread):
        rcpt_replies: lowercase address → FIFO of replies, one consumed per RCPT
            for that address; ``None`` or an exhausted list accepts with
            ``250 2.1.5 Ok``. A 2xx entry also accepts.
        data_replies: FIFO of replies, one consumed per DATA; None or exhausted accepts
            with ``250 2.0.0 Ok queued``. A non-2xx reply means the message is
            not recorded.
        refuse_all: when set, every MAIL FROM gets this reply.
        mail_replies: FIFO of replies, one consumed per MAIL FROM (before
            ``refuse_all``); None or exhausted goes on as without it.
        on_mail: called in the sink's thread at each MAIL FROM, before it is answered, with the
            number of messages this session has delivered before it (1 or more: the client reuses
            a connection after a 250 to DATA).

        dsn: offer DSN in EHLO and take its parameters (recorded in ``ReceivedMessage``).

    Raises:
        OSError: from the constructor if the address cannot be bound.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        auth: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_required: bool = False,
        server_hostname: str = "sink.test",
        dsn: bool = False,
    ) -> None:
        self.host = host
        self.dsn = dsn
        self.tls_context = tls_context
        self.auth = dict(auth) if auth is not None else None
        self.auth_require_tls = auth_require_tls
        self.auth_required = auth_required
        self.server_hostname = server_hostname

        self.rcpt_replies: dict[str, list[str | None]] = {}
        self.data_replies: list[str | None] = []
        self.refuse_all: str | None = None
        self.mail_replies: list[str | None] = []
        self.on_mail: Callable[[int], None] | None = None

        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._rcpt_attempts: dict[str, int] = {}
        self._data_attempts: dict[str, int] = {}
        self._delivered: dict[str, int] = {}
        self._controller: _SinkController | None = None
        self._sock: socket.socket | None = self._bind(port)
        self.port: int = self._sock.getsockname()[1]

    # -- lifecycle ---------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self) -> None:
        """Listen and serve in a background thread; returns once the banner is sent.

        Raises:
            RuntimeError: if already running.
            OSError: if the port cannot be bound again after ``stop()``.
        """
        if self._controller is not None:
            raise RuntimeError("SmtpSink already running")
        if self._sock is None:
            self._sock = self._bind(self.port)
        self._sock.listen(128)
        kwargs: dict[str, Any] = {
            "server_hostname": self.server_hostname,
            "ready_timeout": 10.0,
            "enable_SMTPUTF8": True,
            "data_size_limit": DATA_SIZE_LIMIT,
            "decode_data": False,
        }
        if self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_require_tls"] = self.auth_require_tls
            kwargs["auth_required"] = self.auth_required
        controller = _SinkController(_SinkHandler(self), self._sock, **kwargs)
        try:
            controller.start()
        except BaseException:
            controller.stop(no_assert=True)
            self._sock.close()
            self._sock = None  # rebind on the next start()
            raise
        self._controller = controller

    def stop(self) -> None:
        """Stop serving and close the listening socket; open sessions are dropped.

        Idempotent. The port stays ``self.port`` for a later ``start()``.
        """
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()  # closes the server and with it the listening socket
            self._sock = None
        elif self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and getattr(self, "_controller", None) is None:
            sock.close()

    # -- what the tests read ----------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Snapshot of the accepted messages, in arrival order."""
        with self._cond:
            return list(self._messages)

    @property
    def attempts(self) -> dict[str, int]:
        """Lowercase recipient → number of RCPT TO commands for it (refused ones too)."""
        with self._cond:
            return dict(self._rcpt_attempts)

    @property
    def data_attempts(self) -> dict[str, int]:
        """Lowercase recipient → number of DATA commands whose transaction included it."""
        with self._cond:
            return dict(self._data_attempts)

    @property
    def delivered(self) -> dict[str, int]:
        """Lowercase recipient → number of recorded messages for it ("delivered once" == 1)."""
        with self._cond:
            return dict(self._delivered)

    def messages_for(self, address: str) -> list[ReceivedMessage]:
        """Recorded messages that list ``address`` (case-insensitive) as a recipient."""
        key = address.lower()
        return [m for m in self.messages if any(r.lower() == key for r in m.rcpt_tos)]

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages were accepted.

        Args:
            count: number of messages to wait for (counted since start or ``reset()``).
            timeout: seconds.

        Returns:
            A snapshot of all accepted messages (``len >= count``), arrival order.

        Raises:
            AssertionError: on timeout, describing what the sink did see.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._describe_timeout(count, timeout))
                self._cond.wait(remaining)
            return list(self._messages)

    def wait_for_recipient(self, address: str, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until a message for ``address`` (case-insensitive) was accepted; returns those messages.

        Raises:
            AssertionError: on timeout.
        """
        wanted = address.lower()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self._messages if wanted in (r.lower() for r in m.rcpt_tos)]
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no message for <{address}> within {timeout:g} s\n"
                        + self._describe_timeout(len(self._messages) + 1, timeout)
                    )
                self._cond.wait(remaining)

    def _describe_timeout(self, count: int, timeout: float) -> str:
        got = [f"  from=<{m.mail_from}> to={m.rcpt_tos} {len(m.data)} bytes" for m in self._messages]
        pending_rcpt = {k: v for k, v in self.rcpt_replies.items() if v}
        return (
            f"SmtpSink on {self.host}:{self.port}: expected {count} message(s) within "
            f"{timeout:g} s, got {len(self._messages)}\n"
            + ("\n".join(got) + "\n" if got else "")
            + f"  RCPT attempts: {self._rcpt_attempts}\n"
            f"  DATA attempts: {self._data_attempts}\n"
            f"  unconsumed rcpt_replies: {pending_rcpt}, data_replies: {self.data_replies}, "
            f"refuse_all: {self.refuse_all!r}, running: {self.running}"
        )

    def reset(self) -> None:
        """Forget recorded messages, counters and scripted replies."""
        with self._cond:
            self._messages.clear()
            self._rcpt_attempts.clear()
            self._data_attempts.clear()
            self._delivered.clear()
            self.rcpt_replies.clear()
            self.data_replies.clear()
            self.mail_replies.clear()
            self.refuse_all = None

    # -- called from the sink thread --------------------------------------

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.auth is None:
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "surrogateescape")
        password = auth_data.password.decode("utf-8", "surrogateescape")
        if self.auth.get(user) == password:
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    def _next_rcpt_reply(self, address: str) -> str | None:
        key = address.lower()
        with self._cond:
            self._rcpt_attempts[key] = self._rcpt_attempts.get(key, 0) + 1
            script = self.rcpt_replies.get(key)
            return script.pop(0) if script else None

    def _next_data_reply(self, rcpt_tos: list[str]) -> str | None:
        with self._cond:
            for rcpt in rcpt_tos:
                key = rcpt.lower()
                self._data_attempts[key] = self._data_attempts.get(key, 0) + 1
            return self.data_replies.pop(0) if self.data_replies else None

    def _record(self, message: ReceivedMessage) -> None:
        with self._cond:
            self._messages.append(message)
            for rcpt in message.rcpt_tos:
                key = rcpt.lower()
                self._delivered[key] = self._delivered.get(key, 0) + 1
            self._cond.notify_all()


def _is_positive(reply: str) -> bool:
    return reply[:1] == "2"


def _close_after_reply_if_421(server: SMTP, reply: str) -> None:
    # aiosmtpd writes the reply synchronously right after the hook returns, before
    # the loop runs callbacks, so closing on the next iteration sends it first.
    if reply.startswith("421") and server.transport is not None:
        asyncio.get_running_loop().call_soon(server.transport.close)


class _SinkHandler:
    """aiosmtpd handler; implementing handle_MAIL/RCPT means we fill the envelope."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink
        self.dsn = sink.dsn

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._sink.on_mail is not None:
            self._sink.on_mail(getattr(session, "sink_delivered", 0))
        scripted = self._sink.mail_replies.pop(0) if self._sink.mail_replies else None
        refuse = scripted if scripted is not None else self._sink.refuse_all
        if refuse is not None:
            _close_after_reply_if_421(server, refuse)
            return refuse
        envelope.mail_from = address  # "<>" for the null sender; aiosmtpd needs it truthy
        envelope.mail_options.extend(mail_options)
        if self.dsn:
            envelope.mail_options.extend(getattr(server, "dsn_taken", []))
            envelope.dsn_rcpt_params = {}  # type: ignore[attr-defined]  # per transaction: sessions run at once
        return DEFAULT_MAIL_OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._sink._next_rcpt_reply(address)
        if reply is None or _is_positive(reply):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            if self.dsn:
                envelope.dsn_rcpt_params[address] = list(getattr(server, "dsn_taken", []))  # type: ignore[attr-defined]
            return reply or DEFAULT_RCPT_OK
        _close_after_reply_if_421(server, reply)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._sink._next_data_reply(envelope.rcpt_tos) or DEFAULT_DATA_OK
        if not _is_positive(reply):
            _close_after_reply_if_421(server, reply)
            return reply
        mail_from = envelope.mail_from or ""
        session.sink_delivered = getattr(session, "sink_delivered", 0) + 1
        auth_user = session.auth_data if isinstance(session.auth_data, str) else None
        self._sink._record(
            ReceivedMessage(
                mail_from="" if mail_from == "<>" else mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                peer=tuple(session.peer) if session.peer else (),
                tls=session.ssl is not None,
                auth_user=auth_user if session.authenticated else None,
                mail_options=list(envelope.mail_options),
                helo=session.host_name,
                rcpt_params=dict(getattr(envelope, "dsn_rcpt_params", {})) if self.dsn else None,
                accepted_at=time.monotonic(),
            )
        )
        return reply
