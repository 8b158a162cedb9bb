"""Recipients at RCPT: virtual alias expansion, then recipient validation for mail to ``relay_domains``.

Top-level keys (Postfix's names)::

    virtual_alias_maps = ["/etc/gateway/virtual"]            # gateway.recipients.aliases
    relay_recipient_maps = ["/etc/gateway/relay_recipients"]  # gateway.recipients.validation
    [relay_recipient_ldap]                                    # a directory too: gateway.recipients.ldap
    recipient_delimiter = "+"                                 # "" for none
    virtual_alias_recursion_limit = 1000
    virtual_alias_expansion_limit = 1000
    reject_unverified_recipient = false                       # probe the next hop: gateway.recipients.verify

Each accepted RCPT address is expanded through ``virtual_alias_maps`` (for
every client, as Postfix's cleanup does); the results are the envelope's
recipients, each remembering the address the client gave (the ORCPT of its
DSNs, what ``queue show`` prints). For an untrusted client, every result in
``relay_domains`` must then be known to ``relay_recipient_maps`` (when set), so
an alias or catch-all counts as a known recipient only if what it leads to
exists. Both tables are read at start and on reload (SIGHUP).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gateway import reply as replies
from gateway.addresses import domain_matches
from gateway.config import Config
from gateway.recipients.aliases import AliasLimitExceeded, VirtualAliases
from gateway.recipients.ldap import LdapRecipients
from gateway.recipients.validation import Lookup, RecipientSource, RecipientTable, combined
from gateway.recipients.verify import AddressVerifier
from gateway.reply import Reply


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where mail for one RCPT address goes, or why it is refused.

    Attributes:
        addresses: the recipients it becomes (itself when no alias matched); empty when refused.
        reply: the refusal (already naming the address), or None.
        reason: the refusal's log reason; rule: the config key that decided; detail: what it found.
    """

    addresses: list[str] = field(default_factory=list)
    reply: Reply | None = None
    reason: str | None = None
    rule: str | None = None
    detail: str | None = None


class RecipientRouting:
    """The alias tables and recipient sources of one configuration.

    Args:
        aliases: the ``virtual_alias_maps`` tables, or None.
        sources: the ``relay_recipient_maps`` sources (empty: every recipient of ``relay_domains`` is taken).
        relay_domains: the domains validated.
    """

    def __init__(
        self, aliases: VirtualAliases | None, sources: Sequence[RecipientSource], relay_domains: tuple[str, ...]
    ) -> None:
        self.aliases = aliases
        self.sources = tuple(sources)
        self.relay_domains = relay_domains
        self.verifier: AddressVerifier | None = None

    @classmethod
    def from_config(cls, config: Config) -> RecipientRouting | None:
        """The tables ``config`` names, read now; None when it names none.

        Raises:
            ConfigError: naming ``virtual_alias_maps`` or ``relay_recipient_maps`` for a file that cannot be read.
        """
        directory, verifier = LdapRecipients.from_config(config), AddressVerifier.from_config(config)
        if not (config.virtual_alias_maps or config.relay_recipient_maps or directory or verifier):
            return None
        aliases = (
            VirtualAliases(
                config.virtual_alias_maps,
                config.recipient_delimiter,
                config.virtual_alias_recursion_limit,
                config.virtual_alias_expansion_limit,
            )
            if config.virtual_alias_maps
            else None
        )
        sources: list[RecipientSource] = [
            RecipientTable(path, config.recipient_delimiter) for path in config.relay_recipient_maps
        ]
        if directory is not None:
            sources.append(directory)  # after the tables, as Postfix tries its maps in order
        if verifier is not None:
            sources.append(verifier)  # last: a probe only for what no table or directory knows
        routing = cls(aliases, sources, config.relay_domains)
        routing.verifier = verifier
        return routing

    def attach_prober(self, prober: Callable[[str, str], Awaitable[Reply]]) -> None:
        """Give address verification the relay's probe (``(sender, address) -> RCPT reply``); the app wires
        it, so that the SMTP edge never imports the relay."""
        if self.verifier is not None:
            self.verifier.prober = prober

    async def resolve(self, address: str, *, validate: bool) -> Resolution:
        """Expand ``address``; with ``validate``, check each result in ``relay_domains`` against the sources.

        Args:
            address: the RCPT address, accepted by relay access.
            validate: the client is untrusted (inbound mail), so unknown recipients are refused.
        """
        try:
            addresses = self.aliases.expand(address) if self.aliases is not None else [address]
        except AliasLimitExceeded as error:
            return Resolution(
                reply=replies.for_recipient(replies.ALIAS_EXPANSION_FAILED, address),
                reason="virtual_alias_limit",
                rule="virtual_alias_maps",
                detail=str(error),
            )
        if validate and self.sources:
            for result in addresses:
                if not domain_matches(result.rpartition("@")[2], self.relay_domains):
                    continue  # forwarded elsewhere by the operator's own alias
                answer, source = await combined(self.sources, result)
                if answer.lookup is Lookup.UNKNOWN and source == AddressVerifier.name:
                    return Resolution(
                        reply=replies.for_recipient(replies.undeliverable(answer.detail or ""), address),
                        reason="user_unknown",
                        rule=AddressVerifier.name,
                        detail=result,
                    )
                if answer.lookup is Lookup.UNKNOWN:
                    return Resolution(
                        reply=replies.for_recipient(replies.USER_UNKNOWN, address),
                        reason="user_unknown",
                        rule="relay_recipient_maps",
                        detail=f"{result} unknown" if result != address else None,
                    )
                if answer.lookup is Lookup.UNVERIFIED:
                    return Resolution(
                        reply=replies.for_recipient(replies.unverified(answer.detail or ""), address),
                        reason="unverified_recipient",
                        rule=AddressVerifier.name,
                        detail=result,
                    )
                if answer.lookup is Lookup.UNAVAILABLE:
                    return Resolution(
                        reply=replies.for_recipient(replies.RECIPIENT_LOOKUP_FAILED, address),
                        reason="recipient_lookup_failed",
                        rule="relay_recipient_maps",
                        detail=f"{source} did not answer for {result}",
                    )
        return Resolution(addresses)
