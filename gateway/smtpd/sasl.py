"""SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, run by the gateway, not aiosmtpd.

aiosmtpd's own AUTH is not used: on an implicit-TLS listener it believes the
session is unencrypted and never offers AUTH, its LOGIN challenges end in a NUL
(``User Name\\x00``) that Go's net/smtp and curl do not expect, its
``authenticator`` callback is synchronous (a bcrypt check in it would stall
every session), and it drops the PLAIN authorization identity without a word.

Here: AUTH is offered in EHLO and taken only on a listener with ``auth`` on,
and with ``smtpd_tls_auth_only`` (the default) only inside TLS (``538 5.7.11``
otherwise); LOGIN asks ``Username:`` and ``Password:``; the password check runs
off the event loop (:mod:`gateway.auth`); a PLAIN authorization identity other
than the login is refused. The replies of RFC 4954 §4, §6: ``503 5.5.1`` for a
second AUTH or AUTH inside a transaction (or before EHLO), ``504 5.5.4`` for an
unknown mechanism, ``501 5.7.0`` when the client cancels with ``*``,
``501 5.5.2`` for a response that is not base64, ``535 5.7.8`` for a wrong
login or password, ``454 4.7.0`` when the password store cannot answer, and
``235 2.7.0`` for a login. A failure is logged in Postfix's own words
(``warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: authentication
failure``), which fail2ban's stock ``postfix-sasl`` filter reads; a temporary
failure of the password store is logged in other words, so that fail2ban does
not ban clients for it.

Brute force: failed logins are counted per client (IPv4 address, IPv6 /64) and
per login (:mod:`gateway.auth.throttle`); past ``failure_limit`` within
``failure_window`` an AUTH gets ``454 4.7.0`` after a pause, without a password
check, and after ``session_failure_limit`` failures in one session it is closed
with ``421 4.7.0``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import TYPE_CHECKING

from gateway import metrics
from gateway import reply as replies
from gateway.auth import AuthClient, Authenticator, AuthOutcome, AuthSettings
from gateway.smtpd.connection_limits import client_key

if TYPE_CHECKING:
    from gateway.smtpd.protocol import GatewaySMTP

log = logging.getLogger("gateway.smtpd")

MECHANISMS = ("PLAIN", "LOGIN")  # in the order of gateway.reply.EHLO_AUTH
_USERNAME_CHALLENGE = b"Username:"
_PASSWORD_CHALLENGE = b"Password:"
_MAX_FIELD = 1024  # characters of a login or a password: more is not a login, it is an attack
THROTTLE_PAUSE = 1.0  # seconds before the 454 of a throttled AUTH (Postfix smtpd_error_sleep_time)


class _Cancelled(Exception):
    """The client ended the exchange (``*``, junk base64, or the connection); its reply is sent."""


def offered(mode: str, settings: AuthSettings | None, tls_active: bool) -> bool:
    """True when EHLO should name AUTH: the listener's ``auth`` is on and TLS is up, or not required for AUTH."""
    return mode != "off" and settings is not None and (tls_active or not settings.tls_only)


async def _response(server: GatewaySMTP, challenge: bytes) -> bytes:
    """Send ``334 <base64 challenge>`` and return the client's decoded answer.

    Raises:
        _Cancelled: after replying to ``*`` (501 5.7.0) or to an answer that is
            not base64 (501 5.5.2), or when the connection closed.
    """
    await server.push(replies.auth_challenge(challenge))
    try:
        line = await server._reader.readline()
    except ValueError:  # longer than the stream reader's limit
        await server.push(str(replies.AUTH_BAD_RESPONSE))
        raise _Cancelled from None
    if not line.endswith(b"\n"):
        raise _Cancelled  # the connection closed
    return _decode(line.strip())


def _decode(blob: bytes) -> bytes:
    if blob == b"*":
        raise _Cancelled(replies.AUTH_CANCELLED)
    if blob == b"=":  # RFC 4954 §4: an empty initial response
        return b""
    try:
        return base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise _Cancelled(replies.AUTH_BAD_RESPONSE) from None


async def _credentials(server: GatewaySMTP, mechanism: str, initial: bytes | None) -> tuple[str, str] | None:
    """(login, password) from the exchange of ``mechanism``; None for a PLAIN message that is malformed.

    Raises:
        _Cancelled: see :func:`_response`.
    """
    if mechanism == "PLAIN":
        message = initial if initial is not None else await _response(server, b"")
        parts = message.split(b"\x00")
        if len(parts) != 3:
            return None
        authzid, login, password = (part.decode("utf-8", "surrogateescape") for part in parts)
        if authzid and authzid != login:
            log.info(
                "%s: PLAIN authorization identity %r differs from the login %r: refused",
                server.gateway_ctx.client.describe(),
                authzid[:_MAX_FIELD],
                login[:_MAX_FIELD],
            )
            return None
        return login, password
    login_bytes = initial if initial is not None else await _response(server, _USERNAME_CHALLENGE)
    password_bytes = await _response(server, _PASSWORD_CHALLENGE)
    return login_bytes.decode("utf-8", "surrogateescape"), password_bytes.decode("utf-8", "surrogateescape")


def _auth_client(server: GatewaySMTP) -> AuthClient:
    local = server.transport.get_extra_info("sockname") if server.transport is not None else None
    return AuthClient(
        remote_ip=str(server.gateway_ctx.client.address),
        local_ip=str(local[0]) if isinstance(local, tuple) else "",
        secured=server.tls_active,
    )


async def authenticate(
    server: GatewaySMTP, arg: str, *, mode: str, settings: AuthSettings | None, authenticator: Authenticator | None
) -> None:
    """Run one ``AUTH`` command of ``server``'s session and send every reply of it.

    On success the login is recorded as ``server.gateway_ctx.client.auth_user``
    (relay access then trusts the client; see :mod:`policies.relay_access`).

    Args:
        server: the session's protocol object.
        arg: the command's argument, ``MECHANISM [initial-response]``.
        mode: the listener's ``auth`` setting.
        settings, authenticator: from ``[auth]`` (None when no listener offers AUTH).
    """
    client = server.gateway_ctx.client
    if mode == "off" or settings is None or authenticator is None:
        await server.push(str(replies.AUTH_NOT_ENABLED))
        return
    if settings.tls_only and not server.tls_active:
        await server.push(str(replies.AUTH_ENCRYPTION_REQUIRED))
        return
    if server.session is None or not server.session.extended_smtp:
        await server.push(str(replies.AUTH_NEED_EHLO))
        return
    if client.auth_user is not None:
        await server.push(str(replies.AUTH_ALREADY))
        return
    if server.envelope is not None and server.envelope.mail_from is not None:
        await server.push(str(replies.AUTH_IN_TRANSACTION))
        return
    words = arg.split()
    if not words or len(words) > 2:
        await server.push(str(replies.AUTH_SYNTAX))
        return
    mechanism = words[0].upper()
    if mechanism not in MECHANISMS:
        await server.push(str(replies.AUTH_UNKNOWN_MECHANISM))
        return
    from gateway.auth.throttle import process_throttle  # imported late: only a gateway that offers AUTH needs it

    throttle = process_throttle(settings.failure_limit, settings.failure_window, settings.cluster)
    key = client_key(str(client.address))
    if await throttle.client_blocked(key):
        await _throttled(server, "client", f"client unknown[{client.address}]", settings)
        return
    try:
        initial = _decode(words[1].encode("ascii", "replace")) if len(words) == 2 else None
        credentials = await _credentials(server, mechanism, initial)
    except _Cancelled as cancelled:
        if cancelled.args:
            await server.push(str(cancelled.args[0]))
        metrics.AUTH_ATTEMPTS.labels(mechanism, "cancelled").inc()
        return
    if credentials is not None and max(map(len, credentials)) > _MAX_FIELD:
        credentials = None  # not a login: an attack
    login, password = credentials if credentials is not None else ("", "")
    if login and await throttle.login_blocked(login):
        await _throttled(server, "login", f"login {login!r}", settings)
        return
    outcome = AuthOutcome.FAIL
    if login and password:
        outcome = await authenticator.verify(login, password, _auth_client(server))
    metrics.AUTH_ATTEMPTS.labels(mechanism, outcome.value).inc()
    if outcome is AuthOutcome.OK:
        client.auth_user = login
        log.info("%s: sasl_method=%s, sasl_username=%s", client.describe(), mechanism, client.auth_user)
        await server.push(str(replies.AUTH_OK))
        return
    if outcome is AuthOutcome.TEMPFAIL:
        # not "authentication failed": fail2ban must not ban clients for our password store's trouble
        log.warning(
            "unknown[%s]: SASL %s authentication not possible: the password check failed temporarily",
            client.address,
            mechanism,
        )
        await server.push(str(replies.AUTH_TEMPFAIL))
        return
    # Postfix's words and form, for fail2ban's postfix-sasl filter; never the password
    log.warning("unknown[%s]: SASL %s authentication failed: authentication failure", client.address, mechanism)
    await throttle.failed(key, login or None)
    server.auth_failures += 1
    if server.auth_failures >= settings.session_failure_limit:
        await server.push(str(replies.AUTH_TOO_MANY_FAILURES))
        if server.transport is not None:
            server.transport.close()
        return
    await server.push(str(replies.AUTH_FAILED))


async def _throttled(server: GatewaySMTP, scope: str, who: str, settings: AuthSettings) -> None:
    """Refuse an AUTH of a client or login over its failure limit: a pause, then 454 4.7.0, no password check."""
    metrics.AUTH_THROTTLED.labels(scope).inc()
    log.warning(
        "%s: AUTH refused: %s has had %d or more failed logins within %gs",
        server.gateway_ctx.client.describe(),
        who,
        settings.failure_limit,
        settings.failure_window,
    )
    await asyncio.sleep(THROTTLE_PAUSE)
    await server.push(str(replies.AUTH_THROTTLED))
