"""Which logins may send as which addresses: Postfix ``smtpd_sender_login_maps`` with
``reject_authenticated_sender_login_mismatch``.

The table is Postfix's text form (the source of a ``hash:`` map): one
``key  login[, login ...]`` a line, ``#`` comments and blank lines skipped;
a key is an address ``user@domain``, a local part ``user`` (any domain) or a
domain ``@domain``, looked up in that order, first match wins, keys without
regard to case (Postfix lower-cases lookups). Logins compare without regard
to case too, as Postfix's smtpd does::

    alice@example.com   alice
    sales@example.com   alice, bob
    @example.org        carol          # every address of example.org
    postmaster          admin          # postmaster@ any domain

A client that logged in may use as ``MAIL FROM`` only an address its login
owns; any other address (one listed for other logins, or not listed at all) is
refused ``553 5.7.1 <addr>: Sender address rejected: not owned by user
<login>``. The null sender ``<>`` is not checked (bounces), as in Postfix. The
table is read at start and on reload (SIGHUP).

With ``[auth] check_from_header = true`` (maddy's ``authorize_sender`` with
``check_header``) the addresses of the message's ``From:`` field are held to the
same table at DATA: each must be owned by the login, and a ``From:`` with no
address is refused too, so a login cannot show its readers an author it does
not own while sending as its own envelope address.
"""

from __future__ import annotations

import email.utils
from pathlib import Path

from gateway.errors import ConfigError
from gateway.message import FileText, field_name, field_value, raw_fields


class SenderLogins:
    """The owners of sender addresses, from one table file.

    Args:
        path: the table (``auth.smtpd_sender_login_maps``).
        check_from_header: hold the ``From:`` addresses to the table too (:meth:`unowned_author`).

    Raises:
        ConfigError: naming ``auth.smtpd_sender_login_maps`` when the file cannot
            be read or a line has a key without logins.
    """

    def __init__(self, path: Path, check_from_header: bool = False) -> None:
        self.path = path
        self.check_from_header = check_from_header
        self.owners: dict[str, frozenset[str]] = {}
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as error:
            raise ConfigError("auth.smtpd_sender_login_maps", str(path), f"a readable table ({error})") from None
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split(None, 1)
            if not fields:
                continue
            key, logins = fields[0], fields[1] if len(fields) > 1 else ""
            names = frozenset(name.lower() for name in logins.replace(",", " ").split())
            if not names:
                raise ConfigError(
                    "auth.smtpd_sender_login_maps",
                    str(path),
                    f"'key login[, login ...]' lines (line {number} names no login for {key})",
                )
            self.owners[key.lower()] = names

    def lookup(self, address: str) -> frozenset[str] | None:
        """The logins owning ``address``: the entry of ``user@domain``, else ``user``, else ``@domain`` (or None)."""
        address = address.lower()
        local, at, domain = address.rpartition("@")
        keys = (address, local, "@" + domain) if at else (address,)
        for key in keys:
            if key in self.owners:
                return self.owners[key]
        return None

    def owns(self, login: str, address: str) -> bool:
        """True when ``login`` may send as ``address`` (the null sender ``""`` always)."""
        if not address:
            return True
        owners = self.lookup(address)
        return owners is not None and login.lower() in owners

    def unowned_author(self, login: str, raw: bytes | FileText, end: int) -> str | None:
        """The first ``From:`` address of the message ``raw`` that ``login`` does not own, else None.

        ``end`` is the header section's end (:func:`gateway.message.header_end`).
        Every ``From:`` field counts (RFC 5322 allows one, with several
        addresses); a message whose ``From:`` fields give no address returns
        ``""``, refused as the null address.
        """
        authors = [
            address
            for field in raw_fields(raw, end)
            if field_name(field) == "from"
            for _, address in email.utils.getaddresses([field_value(field)])
            if "@" in address
        ]
        if not authors:
            return ""
        return next((address for address in authors if not self.owns(login, address)), None)
