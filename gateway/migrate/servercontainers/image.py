"""What the ServerContainers mail-gateway image has: its variables, paths and defaults; refusals."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from gateway.errors import GatewayError

STATE_DIR = "/var/lib/gateway"
METRICS_LISTEN = "0.0.0.0:9464"
TLS_DIR = PurePosixPath("/etc/postfix/tls")
ADDITIONAL_DIR = PurePosixPath("/etc/postfix/additional")
DEFAULT_MAIL_FQDN = "amavis.mail-gateway"  # entrypoint.sh, when MAIL_FQDN is unset
IMAGE_SPAM_LEVELS = {"tag_level": "undef", "tag2_level": "5", "kill_level": "20"}  # entrypoint.sh defaults
UNDEF_TAG_LEVEL = -999.0  # amavis: undef tag level = headers on every message
DKIM_SELECTOR = "default"  # opendkim-genkey's default selector, used by dkim-helper.sh

# Every variable of the image's README ("OFFICIAL ENVIRONMENT VARIABLES", DKIM cheat sheet).
IMAGE_VARIABLES = (
    "MAIL_FQDN",
    "POSTFIX_SMTPD_BANNER",
    "AUTO_TRUST_NETWORKS",
    "ADDITIONAL_MYNETWORKS",
    "MYNETWORKS",
    "RELAYHOST",
    "DISABLE_AMAVIS",
    "DISABLE_VIRUS_CHECKS",
    "DISABLE_SPAM_CHECKS",
    "AMAVIS_SA_TAG_LEVEL_DEFLT",
    "AMAVIS_SA_TAG2_LEVEL_DEFLT",
    "AMAVIS_SA_KILL_LEVEL_DEFLT",
    "POSTFIX_SSL_OUT_CERT",
    "POSTFIX_SSL_OUT_KEY",
    "POSTFIX_SSL_OUT_SECURITY_LEVEL",
    "POSTFIX_SSL_IN_CERT",
    "POSTFIX_SSL_IN_KEY",
    "POSTFIX_SSL_IN_SECURITY_LEVEL",
    "POSTFIX_SSL_IN_CERT_FINGERPRINTS",
    "POSTFIX_QUEUE_LIFETIME_BOUNCE",
    "POSTFIX_QUEUE_LIFETIME_MAX",
    "POSTFIX_RELAY_DOMAINS",
    "POSTFIX_MYDESTINATION",
    "DKIM_DOMAINS",
)
RAW_CONFIG_PREFIX = "POSTFIX_RAW_CONFIG_"
# Variables of this migration (the image had its scanners built in).
SCANNER_VARIABLES = ("CLAMD_ADDRESS", "RSPAMD_URL", "SPAMD_ADDRESS")
IMAGE_NAMESPACES = ("POSTFIX_", "AMAVIS_", "DKIM_", "DISABLE_")
SPAM_VARIABLES = {
    "tag_level": "AMAVIS_SA_TAG_LEVEL_DEFLT",
    "tag2_level": "AMAVIS_SA_TAG2_LEVEL_DEFLT",
    "kill_level": "AMAVIS_SA_KILL_LEVEL_DEFLT",
}
OUT_LEVELS = ("none", "may", "encrypt", "verify")
IN_LEVELS = ("none", "may", "encrypt")
FQDN = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
FALSE_LOOKING = ("", "0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A variable (or volume file) the gateway cannot honour, and why."""

    variable: str
    reason: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.reason}"


class Refused(GatewayError):
    """The environment asks for something the gateway cannot do; nothing should be written.

    Attributes:
        refusals: every refused variable with its reason, in the order found.
    """

    def __init__(self, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        super().__init__("; ".join(str(r) for r in refusals))


def is_set(environ: Mapping[str, str], name: str) -> bool:
    return name in environ


def postfix_list(text: str) -> list[str]:
    """Postfix list syntax: items separated by commas and/or whitespace (postconf(5))."""
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def is_lookup_table(item: str) -> bool:
    """``hash:/path``, ``/file/name`` or ``$parameter``: Postfix indirections the gateway has no equivalent of."""
    return item.startswith(("/", "$")) or bool(re.match(r"^[a-z]+:[/.]", item))
