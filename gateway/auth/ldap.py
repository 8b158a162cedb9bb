"""The ``ldap`` back end: find the user by a filter, bind as that entry with the password, check a group.

As exim's and Postfix's LDAP set-ups do (and Dovecot's ``auth_bind``): a
search, as ``ldap_bind_dn`` or anonymously, under ``ldap_search_base`` with
``ldap_filter`` (``%s`` the whole login, ``%u`` its local part, ``%d`` its
domain, each escaped per RFC 4515, so a login such as ``*`` or ``a)(uid=*``
matches nothing it should not) must find exactly one entry; a simple bind as
that entry's DN with the given password must succeed; and, when
``ldap_group_filter`` is set (e.g.
``(memberOf=cn=mail-senders,ou=groups,dc=example,dc=org)``), the entry, read
with the user's own bind, must match it. An unknown login still costs a bind
(as a DN that does not exist), so it takes as long to refuse as a wrong password.

An empty password is refused before any bind: an LDAP simple bind with a DN
and no password is an anonymous bind that "succeeds" (RFC 4513 §5.1.2). A
server that is down, slow (``timeout``) or refuses the service account is a
temporary failure (``454 4.7.0``), never ``535``.

ldap3 is synchronous: each check runs in a worker thread, on connections of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re

from gateway.auth import AuthClient, AuthOutcome

log = logging.getLogger("gateway.auth")

_INVALID_CREDENTIALS = 49  # LDAP resultCode (RFC 4511 §4.1.9)


def user_filter(template: str, login: str) -> str:
    """``template`` with ``%s`` (login), ``%u`` (local part), ``%d`` (domain) replaced, each escaped (RFC 4515).

    ``%%`` is a percent sign. A login without ``@`` is all local part, with an empty domain.
    """
    from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]

    local, at, domain = login.rpartition("@")
    if not at:
        local, domain = login, ""
    values = {"s": login, "u": local, "d": domain}
    return re.sub(
        r"%([sud%])", lambda m: "%" if m.group(1) == "%" else str(escape_filter_chars(values[m.group(1)])), template
    )


class LdapAuth:
    """Checks logins against one LDAP server.

    Args:
        url: ``ldap://host:port`` or ``ldaps://host:port``.
        search_base, filter_template: where and how to find the user's entry.
        bind_dn, bind_password: the service account for the search (None: anonymous).
        group_filter: the filter the user's entry must match (None: any entry may log in).
        timeout: seconds for connecting and for each answer.
    """

    def __init__(
        self,
        url: str,
        search_base: str,
        filter_template: str,
        *,
        bind_dn: str | None = None,
        bind_password: str | None = None,
        group_filter: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.search_base = search_base
        self.filter_template = filter_template
        self.bind_dn = bind_dn
        self.bind_password = bind_password
        self.group_filter = group_filter
        self.timeout = max(1, math.ceil(timeout))  # whole seconds: ldap3 packs its socket timeouts as integers

    async def verify(self, login: str, password: str, client: AuthClient) -> AuthOutcome:
        """:meth:`check` in a worker thread (``client`` unused)."""
        if not password:
            return AuthOutcome.FAIL  # never an anonymous bind that "succeeds"
        return await asyncio.to_thread(self.check, login, password)

    def check(self, login: str, password: str) -> AuthOutcome:
        """The blocking check (see the module docstring)."""
        from ldap3 import BASE, SUBTREE, Connection, Server  # type: ignore[import-untyped]
        from ldap3.core.exceptions import LDAPException  # type: ignore[import-untyped]

        if not password:
            return AuthOutcome.FAIL
        server = Server(self.url, connect_timeout=self.timeout, get_info=None)
        try:
            with Connection(
                server,
                user=self.bind_dn,
                password=self.bind_password,
                receive_timeout=self.timeout,
                raise_exceptions=False,
            ) as service:
                if not service.bound:
                    log.error(
                        "auth: LDAP %s refused the search bind as %s: %s",
                        self.url,
                        self.bind_dn or "anonymous",
                        service.result.get("description"),
                    )
                    return AuthOutcome.TEMPFAIL
                service.search(
                    self.search_base, user_filter(self.filter_template, login), SUBTREE, attributes=[], size_limit=2
                )
                found = [entry["dn"] for entry in service.response or [] if entry.get("type") == "searchResEntry"]
            if len(found) > 1:
                log.error("auth: LDAP filter %s finds more than one entry for %r: refused", self.filter_template, login)
                return AuthOutcome.FAIL
            if not found:
                # a bind that must fail, so that an unknown login takes as long as a wrong password
                decoy = Connection(
                    server,
                    user=f"cn=no such user,{self.search_base}",
                    password=password,
                    receive_timeout=self.timeout,
                    raise_exceptions=False,
                )
                try:
                    decoy.bind()
                finally:
                    decoy.unbind()
                return AuthOutcome.FAIL
            user = Connection(
                server, user=found[0], password=password, receive_timeout=self.timeout, raise_exceptions=False
            )
            try:
                if not user.bind():
                    if user.result.get("result") == _INVALID_CREDENTIALS:
                        return AuthOutcome.FAIL
                    log.error("auth: LDAP %s bind as %s: %s", self.url, found[0], user.result.get("description"))
                    return AuthOutcome.TEMPFAIL
                if self.group_filter and not user.search(found[0], self.group_filter, BASE, attributes=[]):
                    log.info(
                        "auth: LDAP entry %s does not match ldap_group_filter %s: refused", found[0], self.group_filter
                    )
                    return AuthOutcome.FAIL
                return AuthOutcome.OK
            finally:
                user.unbind()
        except (LDAPException, OSError) as error:
            log.error("auth: LDAP %s did not answer: %s", self.url, error)
            return AuthOutcome.TEMPFAIL
