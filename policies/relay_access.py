"""Relay access, in Postfix's order (``smtpd_relay_restrictions``).

At connect the client is classified once: trusted when its address is in
``mynetworks`` (plus, with ``auto_trust_networks``, the networks of the
host's interfaces that are up, none shorter than /16 or /48, read again every
30 s and logged when they change), or when it presented a client certificate that
verified against ``smtpd_tls_CAfile`` and whose SHA-256 or SHA-1 fingerprint is
listed in ``relay_clientcerts`` (``permit_mynetworks``,
``permit_tls_clientcerts``).

At HELO/EHLO a name with control characters, line or paragraph separators or
bytes that are not UTF-8 is refused (Postfix ``reject_invalid_helo_hostname``):
it is never a host name or address literal (RFC 5321 §4.1.1.1).

At RCPT a trusted client may send to any domain (``permit``); anyone may send
to ``relay_domains`` (``permit_auth_destination``) unless the local part asks a
later host to route on (``user%other``, ``other!user``, ``"user@other"``:
Postfix ``allow_untrusted_routing = no``); everything else gets
``554 5.7.1 Relay access denied`` (``reject_unauth_destination``).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import ClassVar

from gateway import reply as replies
from gateway.addresses import domain_matches, has_routing_tricks, split_mailbox
from gateway.config import Config
from gateway.networks import MIN_TRUSTED_PREFIX, InterfaceScan, NetworkSet, scan_interfaces
from gateway.pipeline.policy import Policy, PolicyContext
from gateway.safe_text import CONTROL
from gateway.verdict import ACCEPT, CONTINUE, Action, Verdict

_DENIED = Verdict(Action.REJECT, replies.RELAY_DENIED, reason="relay_denied")
_INVALID_HELO_VERDICT = Verdict(Action.REJECT, replies.INVALID_HELO, reason="invalid_helo")
log = logging.getLogger("gateway.relay_access")


class RelayAccess(Policy):
    """Decides who may relay; the only policy that ACCEPTs at RCPT."""

    name: ClassVar[str] = "relay_access"

    def __init__(self, config: Config) -> None:
        self.mynetworks = NetworkSet(config.mynetworks)
        self.auto_trust = config.auto_trust_networks
        self.rescan_interval = config.auto_trust_rescan_interval
        self.scan: InterfaceScan | None = None
        self.interface_networks = NetworkSet(())
        self.scanned_at = 0.0
        if self.auto_trust:
            self._rescan()
        self.relay_clientcerts = config.relay_clientcerts
        self.relay_domains = config.relay_domains

    def _rescan(self) -> None:
        """Read the interfaces again; log the trusted set when it is new or has changed, and what is refused."""
        previous, scan = self.scan, scan_interfaces()
        self.scan, self.scanned_at = scan, time.monotonic()
        if scan == previous:
            return
        for name, network in scan.refused:
            if previous is None or (name, network) not in previous.refused:
                log.warning(
                    "auto_trust_networks: not trusting %s of interface %s: a prefix shorter than /%d",
                    network,
                    name,
                    MIN_TRUSTED_PREFIX[network.version],
                )
        if previous is None or previous.trusted != scan.trusted:
            log.info(
                "auto_trust_networks: trusting the networks of the interfaces that are up: %s (and mynetworks: %s)",
                scan.describe(),
                ", ".join(str(n) for n in self.mynetworks.networks) or "none",
            )
        self.interface_networks = NetworkSet(network for _, network in scan.trusted)

    def trusts_network_of(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True when ``address`` is in mynetworks or (with auto_trust_networks) an interface's network."""
        return self.mynetworks.match(address) is not None or self.interface_networks.match(address) is not None

    def classify(self, ctx: PolicyContext) -> None:
        """Set ``ctx.client.trusted``, ``trusted_by`` and ``trusted_rule`` from address, certificate and login.

        ``trusted_rule`` names what matched in the config's own terms, for the
        log line: ``mynetworks 10.0.0.0/8``, ``auto_trust_networks 172.17.0.0/16``,
        ``relay_clientcerts sha256=<hex>`` or ``... sha1=<hex>`` (whichever was listed).
        """
        client = ctx.client
        network = self.mynetworks.match(client.address)
        by = "mynetworks"
        if network is None:
            network, by = self.interface_networks.match(client.address), "auto_trust_networks"
        if network is not None:
            client.trusted, client.trusted_by, client.trusted_rule = True, by, f"{by} {network}"
        elif client.cert_sha256 and client.cert_sha256 in self.relay_clientcerts:
            client.trusted, client.trusted_by = True, "relay_clientcerts"
            client.trusted_rule = f"relay_clientcerts sha256={client.cert_sha256}"
        elif client.cert_sha1 and client.cert_sha1 in self.relay_clientcerts:
            client.trusted, client.trusted_by = True, "relay_clientcerts"
            client.trusted_rule = f"relay_clientcerts sha1={client.cert_sha1}"
        elif client.auth_user is not None:  # Postfix permit_sasl_authenticated
            client.trusted, client.trusted_by = True, "sasl_authenticated"
            client.trusted_rule = f"permit_sasl_authenticated sasl_username={client.auth_user}"
        else:
            client.trusted, client.trusted_by, client.trusted_rule = False, None, None

    async def on_connect(self, ctx: PolicyContext) -> Verdict:
        if self.auto_trust and time.monotonic() - self.scanned_at >= self.rescan_interval:
            self._rescan()  # docker networks come and go while the gateway runs
        self.classify(ctx)
        return CONTINUE

    async def on_helo(self, ctx: PolicyContext, helo: str) -> Verdict:
        # Postfix reject_invalid_helo_hostname, for what can never be a host name or address literal:
        # control characters, separators, bytes that are not UTF-8 (and that forge log lines).
        if CONTROL.search(helo):
            return _INVALID_HELO_VERDICT
        return CONTINUE

    async def on_mail(self, ctx: PolicyContext, sender: str) -> Verdict:
        # Again per transaction: a client certificate arrives with STARTTLS, after connect.
        self.classify(ctx)
        return CONTINUE

    async def on_rcpt(self, ctx: PolicyContext, recipient: str) -> Verdict:
        try:
            mailbox = split_mailbox(recipient)
        except ValueError:
            return Verdict(Action.REJECT, replies.BAD_ADDRESS_SYNTAX, reason="bad_address")
        if ctx.client.trusted:
            return ACCEPT
        if domain_matches(mailbox.domain, self.relay_domains) and not has_routing_tricks(mailbox):
            return ACCEPT
        return _DENIED
