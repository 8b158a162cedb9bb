"""Checks that plug into the pipeline; each module holds one :class:`gateway.pipeline.policy.Policy`.

REGISTRY maps the names used in ``[pipeline] inbound/outbound`` to the classes;
each class is built once with the whole Config and reads its own table. A
policy's module is imported when its class is first looked up, so a gateway
process loads only the checks its config names (the sender-authentication
stack brings dnspython, dkimpy and PyNaCl, the antivirus pyclamd: megabytes in
every worker that never uses them).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from gateway.pipeline.policy import Policy

# name in [pipeline] -> "module:class"
_LOCATIONS = {
    "relay_access": "policies.relay_access:RelayAccess",
    "sender_auth": "policies.auth.sender_auth:SenderAuthentication",
    "header_checks": "policies.header_checks:HeaderChecks",
    "antivirus": "policies.antivirus:Antivirus",
    "spamassassin": "policies.spam.spamassassin:SpamAssassin",
    "rspamd": "policies.spam.rspamd:Rspamd",
}

# Each class's ``scanner`` kind, known without importing it (tests check it against the classes).
SCANNER_KINDS: dict[str, str] = {"antivirus": "virus", "spamassassin": "spam", "rspamd": "spam"}


class _Registry(Mapping[str, type[Policy]]):
    """``name -> Policy class``, importing a policy's module on its first lookup.

    Raises:
        KeyError: an unknown name (as a dict would).
    """

    def __getitem__(self, name: str) -> type[Policy]:
        module, _, attribute = _LOCATIONS[name].partition(":")
        policy_class: type[Policy] = getattr(importlib.import_module(module), attribute)
        return policy_class

    def __iter__(self) -> Iterator[str]:
        return iter(_LOCATIONS)

    def __len__(self) -> int:
        return len(_LOCATIONS)


REGISTRY: Mapping[str, type[Policy]] = _Registry()
