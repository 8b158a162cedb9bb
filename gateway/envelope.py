"""Who is talking to us (ClientInfo) and what they asked for (Envelope)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Direction(StrEnum):
    """Which pipeline a transaction goes through, decided when the client is classified."""

    OUTBOUND = "outbound"  # a trusted client relays: mynetworks, listed client cert
    INBOUND = "inbound"  # anyone else, only to relay_domains


@dataclass(slots=True)
class ClientInfo:
    """One SMTP connection's peer and TLS facts.

    cert_sha256 / cert_sha1 are lowercase hex without colons and are set only
    for a client certificate that verified against ``smtpd_tls_CAfile``.
    """

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    listener: str
    helo: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_sha256: str | None = None
    cert_sha1: str | None = None
    auth_user: str | None = None
    trusted: bool = False
    trusted_by: str | None = None  # "mynetworks", "auto_trust_networks", "relay_clientcerts", "sasl_authenticated"
    # The rule in the config's terms, for the log: "mynetworks 10.0.0.0/8", "relay_clientcerts sha1=<hex>".
    trusted_rule: str | None = None

    def describe(self) -> str:
        """Postfix log form ``unknown[1.2.3.4]:port``.

        Postfix puts the client's verified reverse name before the brackets; the
        gateway looks up no reverse names, so it is ``unknown``, as in Postfix
        when there is none. Never the HELO name: a client chooses that, and a
        HELO of ``mx.victim.example[198.51.100.77]`` made log readers such as
        fail2ban take the address in it for the client's. HELO goes into
        ``helo=<...>`` at the end of the lines that name it.
        """
        return f"unknown[{self.address}]:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the spool record."""
        return {
            "address": str(self.address),
            "port": self.port,
            "listener": self.listener,
            "helo": self.helo,
            "tls_version": self.tls_version,
            "tls_cipher": self.tls_cipher,
            "cert_sha256": self.cert_sha256,
            "auth_user": self.auth_user,
            "trusted": self.trusted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientInfo:
        """Inverse of :meth:`to_dict`; raises ValueError/KeyError on bad data."""
        return cls(
            address=ipaddress.ip_address(data["address"]),
            port=int(data["port"]),
            listener=str(data["listener"]),
            helo=data.get("helo"),
            tls_version=data.get("tls_version"),
            tls_cipher=data.get("tls_cipher"),
            cert_sha256=data.get("cert_sha256"),
            auth_user=data.get("auth_user"),
            trusted=bool(data.get("trusted", False)),
        )


@dataclass(slots=True)
class Envelope:
    """One mail transaction (RFC 5321 §3.3).

    sender: the reverse-path; ``""`` is the null sender ``<>``.
    recipients: forward-paths accepted so far, in RCPT order.
    declared_size: the ``SIZE=`` parameter in bytes (RFC 1870), if any.
    """

    sender: str
    recipients: list[str] = field(default_factory=list)
    smtputf8: bool = False
    body_8bitmime: bool = False
    declared_size: int | None = None
    direction: Direction = Direction.INBOUND
    # final recipient -> the RCPT address it came from, for those an alias rewrote (virtual_alias_maps)
    original_recipients: dict[str, str] = field(default_factory=dict)
    # RFC 3461: RET and ENVID of MAIL; final recipient -> (NOTIFY words, ORCPT "type;address") of its RCPT
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    recipient_dsn: dict[str, tuple[tuple[str, ...] | None, str | None]] = field(default_factory=dict)

    @classmethod
    def from_mail(cls, sender: str, parameters: list[str], *, smtputf8: bool) -> Envelope:
        """The transaction a ``MAIL FROM`` starts: ``SIZE=`` (RFC 1870) and ``BODY=8BITMIME`` (RFC 6152) read."""
        options = [parameter.upper() for parameter in parameters]
        declared = next((o.split("=", 1)[1] for o in options if o.startswith("SIZE=")), None)
        return cls(
            sender=sender,
            smtputf8=smtputf8,
            body_8bitmime="BODY=8BITMIME" in options,
            declared_size=int(declared) if declared and declared.isdigit() else None,
        )
