"""An address verification probe: ask a recipient's next hop whether it would take mail for it, and stop.

Postfix's verify(8) sends a probe through its delivery agents: the next hop's
answer to ``RCPT TO`` decides, and no message is sent. Here the probe takes the
relay's own route and connection set-up (transport_maps, relayhost or MX; TLS
as ``smtp_tls_security_level``; ``smtp_sasl_password_maps``) and then says
``MAIL FROM:<address_verify_sender>``, ``RCPT TO:<address>`` and ``QUIT``.
"""

from __future__ import annotations

import asyncio

import aiosmtplib

from gateway.errors import DeliveryError
from gateway.relay import replies
from gateway.relay.client import SmtpClient
from gateway.relay.routing import Router, RoutingError
from gateway.reply import Reply


async def probe_recipient(router: Router, client: SmtpClient, sender: str, address: str) -> Reply:
    """The reply of ``address``'s first reachable next hop to ``RCPT TO:<address>``.

    Args:
        router: the relay's routing (where mail for ``address`` would go).
        client: the relay's SMTP client (how it connects: TLS, SASL).
        sender: the probe's ``MAIL FROM`` (``address_verify_sender``).
        address: the recipient to verify.

    Returns:
        The RCPT reply (2xx: deliverable, 5xx: not); a 4xx, possibly made here,
        when no next hop could give an answer (none reachable, a 4xx to MAIL).
    """
    try:
        hosts = await router.hosts(router.destination_for(address))
    except RoutingError as error:
        return error.reply
    last: Reply = replies.NO_ROUTE
    for host in hosts:
        try:
            smtp = await client.connect(host)
        except DeliveryError as error:
            last = error.reply
            continue
        utf8 = not (sender + address).isascii()
        if utf8 and not smtp.supports_extension("smtputf8"):
            smtp.close()
            return replies.smtputf8_not_offered(host.describe())  # RFC 6531 §3.4: no downgrade
        try:
            mail = await smtp.mail(sender, options=["SMTPUTF8"] if utf8 else [], encoding="utf-8" if utf8 else "ascii")
            if mail.code >= 400:
                return replies.probe_sender_refused(host.describe(), Reply.from_remote(mail.code, mail.message))
            answer = await smtp.rcpt(address, encoding="utf-8" if utf8 else "ascii")
            return Reply.from_remote(answer.code, answer.message)
        except aiosmtplib.SMTPResponseException as error:
            if error.code >= 500:
                return Reply.from_remote(error.code, error.message)
            last = Reply.from_remote(error.code, error.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            last = replies.lost_connection(host.describe(), error)
        finally:
            try:
                await asyncio.wait_for(smtp.quit(), 5)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                smtp.close()
    return last
