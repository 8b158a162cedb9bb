"""The replies the relay side records for a recipient when delivery does not get a server's own.

A recipient's ``last_reply`` is the next hop's reply when there is one; when the
attempt failed before any (no route, a DNS failure, a refused connection, a
missing extension) it is one of these, in Postfix's words and with RFC 3463
enhanced status codes. They are logged, kept in the spool record and quoted in
DSNs (RFC 3464 ``Diagnostic-Code``); no SMTP client is ever sent one. Together
with :mod:`gateway.reply` and :mod:`gateway.smtpd.replies` this is the whole
catalogue. Texts longer than :data:`TEXT_LIMIT` characters are cut.
"""

from __future__ import annotations

from gateway.reply import Reply

TEXT_LIMIT = 300  # characters: an exception's text can be long, a DSN line should not be

NO_HOST_ANSWERED = Reply(451, "4.4.1", "no host answered")
FAILED_WITHOUT_REPLY = Reply(550, "5.0.0", "failed")  # a failed recipient that somehow kept no reply
BAD_ADDRESS_SYNTAX = Reply(550, "5.1.3", "bad address syntax")
NO_ROUTE = Reply(451, "4.4.4", "no route to destination")


def _cut(text: str) -> str:
    return text[:TEXT_LIMIT]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def connect_failed(host: str, error: BaseException) -> Reply:
    """451 4.4.1: no SMTP session could be opened with ``host`` (refused, timed out, no greeting)."""
    return Reply(451, "4.4.1", _cut(f"connect to {host} failed: {_describe(error)}"))


def lost_connection(host: str, error: BaseException) -> Reply:
    """451 4.4.2: the session with ``host`` broke off (reset, timeout, TLS error) during a transaction."""
    return Reply(451, "4.4.2", _cut(f"lost connection with {host}: {_describe(error)}"))


def starttls_not_offered(host: str) -> Reply:
    """451 4.7.4: ``smtp_tls_security_level`` asks for TLS and ``host`` offered no STARTTLS (RFC 3207)."""
    return Reply(451, "4.7.4", f"TLS is required, but {host} did not offer STARTTLS")


def auth_not_offered(host: str) -> Reply:
    """451 4.7.0: a password is configured for the next hop, and ``host`` offered no AUTH."""
    return Reply(451, "4.7.0", f"{host} offers no AUTH")


def sasl_failed(server_reply: Reply, server_code: int) -> Reply:
    """451 4.7.8, whatever the server's class: a password fix should not bounce the queue.

    Postfix's ``smtp_sasl_auth_soft_bounce = yes``; ``server_reply`` is quoted.
    """
    return Reply(
        451,
        "4.7.8",
        _cut(f"SASL authentication failed; server said: {server_code} {server_reply.status} {server_reply.text}"),
    )


def address_unsendable(error: BaseException) -> Reply:
    """553 5.1.3: the address cannot be written on the wire (control characters, not encodable)."""
    return Reply(553, "5.1.3", _cut(f"address cannot be sent: {error}"))


def smtputf8_not_offered(host: str) -> Reply:
    """550 5.6.7: an address is not ASCII and ``host`` offered no SMTPUTF8 (RFC 6531 §3.4: no downgrade)."""
    return Reply(550, "5.6.7", f"SMTPUTF8 is required, but was not offered by host {host}")


def domain_not_found(domain: str) -> Reply:
    """550 5.1.2: DNS says the recipient domain does not exist (NXDOMAIN)."""
    return Reply(550, "5.1.2", f"Host or domain name not found: {domain}")


def domain_lookup_failed(domain: str) -> Reply:
    """451 4.4.3: the MX lookup of ``domain`` failed for now (timeout, SERVFAIL)."""
    return Reply(451, "4.4.3", f"Host or domain name lookup failed: {domain}")


def null_mx(domain: str) -> Reply:
    """556 5.1.10: ``domain`` publishes a null MX (RFC 7505 §3)."""
    return Reply(556, "5.1.10", f"Domain {domain} does not accept mail (null MX)")


def host_lookup_failed(host: str) -> Reply:
    """451 4.4.3: the address lookup of an MX or relayhost name failed for now."""
    return Reply(451, "4.4.3", f"Host lookup failed: {host}")


def host_not_found(host: str) -> Reply:
    """550 5.1.2: an MX or relayhost name does not exist."""
    return Reply(550, "5.1.2", f"Host not found: {host}")


def host_without_address(host: str) -> Reply:
    """451 4.4.3: an MX or relayhost name exists but has no usable address."""
    return Reply(451, "4.4.3", f"No address for host {host}")


def probe_sender_refused(host: str, reply: Reply) -> Reply:
    """An address verification probe whose MAIL FROM ``host`` refused: the recipient cannot be told now."""
    return Reply(450, "4.1.1", f"probe sender refused by {host}: {reply}"[:400])
