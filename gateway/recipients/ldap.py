"""An LDAP directory as a ``relay_recipient_maps`` source: a recipient exists when the filter finds an entry.

The ``[relay_recipient_ldap]`` table (Postfix's ldap_table(5) in the terms the
``[auth]`` LDAP back end uses)::

    ldap_url = "ldap://ldap.example.org:389"     # or ldaps://
    ldap_search_base = "ou=people,dc=example,dc=org"
    ldap_filter = "(|(mail=%s)(mailAlternateAddress=%s))"   # %s address, %u local part, %d domain (escaped)
    ldap_bind_dn = ""                  # the search's account ("": anonymous) and its ldap_bind_password
    timeout = "10s"                    # past it, or with the server down: 451 4.3.0, never 550

The address is put into the filter escaped (RFC 4515), so ``*`` or ``a)(uid=*``
finds nothing. ldap3 is synchronous: each lookup runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import math

from gateway.auth.ldap import user_filter
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.pipeline.section import Section
from gateway.recipients.validation import KNOWN, UNKNOWN, Answer, Lookup

log = logging.getLogger("gateway.recipients")

SECTION = "relay_recipient_ldap"
KEYS = {"ldap_url", "ldap_search_base", "ldap_filter", "ldap_bind_dn", "ldap_bind_password", "timeout"}


class LdapRecipients:
    """Recipients found in one LDAP directory.

    Args:
        url: ``ldap://host:port`` or ``ldaps://host:port``.
        search_base, filter_template: where and how to look an address up.
        bind_dn, bind_password: the account for the search (None: anonymous).
        timeout: seconds for connecting and for the answer.
    """

    def __init__(
        self,
        url: str,
        search_base: str,
        filter_template: str,
        *,
        bind_dn: str | None = None,
        bind_password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.name = f"{SECTION} {url}"
        self.search_base = search_base
        self.filter_template = filter_template
        self.bind_dn = bind_dn
        self.bind_password = bind_password
        self.timeout = max(1, math.ceil(timeout))  # ldap3 packs its socket timeouts as whole seconds

    @classmethod
    def from_config(cls, config: Config) -> LdapRecipients | None:
        """``[relay_recipient_ldap]`` of ``config``; None when the table is absent.

        Raises:
            ConfigError: naming ``relay_recipient_ldap.<key>`` for a missing or malformed value.
        """
        if not config.section(SECTION):
            return None
        section = Section(SECTION, config.section(SECTION), KEYS)
        url, base = section.text("ldap_url"), section.text("ldap_search_base")
        if not url or not url.startswith(("ldap://", "ldaps://")):
            raise ConfigError(section.key("ldap_url"), url, "ldap://host:port or ldaps://host:port")
        if not base:
            raise ConfigError(section.key("ldap_search_base"), base, "the base DN to search under")
        return cls(
            url,
            base,
            section.text("ldap_filter") or "(mail=%s)",
            bind_dn=section.text("ldap_bind_dn"),
            bind_password=section.text("ldap_bind_password"),
            timeout=section.duration("timeout", 10.0),
        )

    async def check(self, address: str) -> Answer:
        """:meth:`lookup` in a worker thread."""
        return await asyncio.to_thread(self.lookup, address)

    def lookup(self, address: str) -> Answer:
        """The blocking lookup: KNOWN when the filter finds an entry, UNAVAILABLE when the server cannot answer."""
        from ldap3 import SUBTREE, Connection, Server  # type: ignore[import-untyped]
        from ldap3.core.exceptions import LDAPException  # type: ignore[import-untyped]

        server = Server(self.url, connect_timeout=self.timeout, get_info=None)
        try:
            with Connection(
                server,
                user=self.bind_dn,
                password=self.bind_password,
                receive_timeout=self.timeout,
                raise_exceptions=False,
            ) as connection:
                if not connection.bound:
                    log.error(
                        "recipients: LDAP %s refused the bind as %s: %s",
                        self.url,
                        self.bind_dn or "anonymous",
                        connection.result.get("description"),
                    )
                    return Answer(Lookup.UNAVAILABLE)
                if not connection.search(
                    self.search_base, user_filter(self.filter_template, address), SUBTREE, attributes=[], size_limit=1
                ):
                    outcome = connection.result.get("description")
                    if outcome in ("success", "noSuchObject", "sizeLimitExceeded"):
                        return KNOWN if outcome == "sizeLimitExceeded" else UNKNOWN
                    log.error("recipients: LDAP %s search for %r: %s", self.url, address, outcome)
                    return Answer(Lookup.UNAVAILABLE)
                found = any(entry.get("type") == "searchResEntry" for entry in connection.response or [])
                return KNOWN if found else UNKNOWN
        except (LDAPException, OSError) as error:
            log.error("recipients: LDAP %s did not answer: %s", self.url, error)
            return Answer(Lookup.UNAVAILABLE)
