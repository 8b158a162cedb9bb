"""The ``dovecot`` back end: Dovecot's authentication protocol, as Postfix's ``smtpd_sasl_type = dovecot``.

The gateway is a client of Dovecot's ``auth`` service (its ``auth-client``
listener: a Unix socket, or TCP as ``inet:host:port``), speaking the protocol
of Dovecot's doc/auth-protocol.txt, version 1.2: it sends ``VERSION`` and
``CPID``, reads the server's handshake up to ``DONE`` (which must offer
``PLAIN``), then one ``AUTH`` request with ``service=smtp``, the client's
``rip``, the listener's ``lip``, ``secured`` when the session is encrypted, and
the credentials as a ``PLAIN`` initial response (the client's mechanism was
already run by :mod:`gateway.smtpd.sasl`). One connection per check, closed
after the answer: logins are rare next to messages, and nothing is left half
open when Dovecot restarts.

Answers: ``OK`` is a login, unless it carries ``nologin`` (the passdb says this
user may not log in here) or ``proxy`` (the user lives on another server), which
are failures, as in Postfix; ``FAIL`` is a wrong login or password, or a
temporary failure when it carries ``temp``; no answer within ``timeout``
seconds, a connection refused or a broken handshake are temporary failures
(``454 4.7.0``), never ``535``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os

from gateway.auth import AuthClient, AuthOutcome

log = logging.getLogger("gateway.auth")

_MAX_LINE = 65536  # octets of one line of the server's


class DovecotAuth:
    """A client of one Dovecot auth service.

    Args:
        path: ``inet:host:port`` or the path of the ``auth-client`` Unix socket.
        timeout: seconds for the whole exchange (connect, handshake, answer).
    """

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.path.startswith("inet:"):
            host, _, port = self.path[5:].rpartition(":")
            return await asyncio.open_connection(host.strip("[]"), int(port), limit=_MAX_LINE)
        return await asyncio.open_unix_connection(self.path, limit=_MAX_LINE)

    async def verify(self, login: str, password: str, client: AuthClient) -> AuthOutcome:
        """Ask Dovecot whether ``password`` is right for ``login`` (see the module docstring for the answers)."""
        try:
            return await asyncio.wait_for(self._exchange(login, password, client), self.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as error:
            log.error(
                "auth: Dovecot auth service %s did not answer: %s",
                self.path,
                error if str(error) else type(error).__name__,
            )
            return AuthOutcome.TEMPFAIL

    async def _exchange(self, login: str, password: str, client: AuthClient) -> AuthOutcome:
        reader, writer = await self._connect()
        try:
            writer.write(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode("ascii"))
            mechanisms = set()
            while True:
                fields = (await reader.readuntil(b"\n")).rstrip(b"\n").split(b"\t")
                if fields[0] == b"VERSION" and fields[1:2] != [b"1"]:
                    raise ValueError(f"protocol version {fields[1:3]!r}, not 1.x")
                if fields[0] == b"MECH" and len(fields) > 1:
                    mechanisms.add(fields[1].upper())
                if fields[0] == b"DONE":
                    break
            if b"PLAIN" not in mechanisms:
                raise ValueError("PLAIN is not among its mechanisms (auth_mechanisms)")
            response = base64.b64encode(
                b"\0" + login.encode("utf-8", "surrogateescape") + b"\0" + password.encode("utf-8", "surrogateescape")
            ).decode("ascii")
            request = ["AUTH", "1", "PLAIN", "service=smtp", f"rip={client.remote_ip}", f"lip={client.local_ip}"]
            if client.secured:
                request.append("secured")
            writer.write(("\t".join(request) + f"\tresp={response}\n").encode("ascii"))
            await writer.drain()
            while True:
                fields = (await reader.readuntil(b"\n")).rstrip(b"\n").split(b"\t")
                if fields[1:2] == [b"1"]:
                    break  # the answer to our request; other lines are not for it
            return _outcome(fields, login)
        finally:
            writer.close()


def _outcome(fields: list[bytes], login: str) -> AuthOutcome:
    verb, extra = fields[0], set(fields[2:])
    if verb == b"OK":
        refusal = next(
            (flag for flag in (b"nologin", b"proxy") if flag in extra or any(f.startswith(flag + b"=") for f in extra)),
            None,
        )
        if refusal is None:
            return AuthOutcome.OK
        log.info("auth: Dovecot answered OK with %s for %r: refused", refusal.decode(), login)
        return AuthOutcome.FAIL
    if verb == b"FAIL":
        return AuthOutcome.TEMPFAIL if b"temp" in extra else AuthOutcome.FAIL
    log.error("auth: Dovecot answered %r to a PLAIN request with its response: refused", verb)
    return AuthOutcome.FAIL
