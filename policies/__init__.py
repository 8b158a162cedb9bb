"""Checks that plug into the pipeline; each module holds one :class:`gateway.pipeline.policy.Policy`.

REGISTRY maps the names used in ``[pipeline] inbound/outbound`` to the classes;
each class is built once with the whole Config and reads its own table.
"""

from __future__ import annotations

from gateway.pipeline.policy import Policy
from policies.antivirus import Antivirus
from policies.header_checks import HeaderChecks
from policies.relay_access import RelayAccess
from policies.spam.rspamd import Rspamd
from policies.auth.sender_auth import SenderAuthentication
from policies.spam.spamassassin import SpamAssassin

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls for cls in (RelayAccess, SenderAuthentication, HeaderChecks, Antivirus, SpamAssassin, Rspamd)}
