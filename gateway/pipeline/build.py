"""Builds the gateway's pipelines from the configuration, and the scan switches.

* the access pipeline (relay access) runs for every session, first;
* ``[pipeline] inbound = [...]`` runs for mail from untrusted clients to
  ``relay_domains``; ``outbound = [...]`` for mail from trusted clients. The
  lists name policies of :data:`policies.REGISTRY`, in order, e.g.
  ``inbound = ["header_checks", "antivirus", "rspamd"]``. Both default to none.
* ``[content_filter]`` holds the switches of the ServerContainers image:
  ``disable_scanning`` (all virus and spam scanners), ``disable_virus_checks``,
  ``disable_spam_checks``, and the bypass lists ``bypass_domains`` (when every
  recipient's domain is listed; ``.example.com`` covers subdomains) and
  ``bypass_clients`` (client networks). Header checks are not scanning: they
  always run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.addresses import domain_matches, split_mailbox
from gateway.auth import Authenticator, AuthSettings, build_authenticator
from gateway.auth.sender_logins import SenderLogins
from gateway.config import Config
from gateway.dkim.settings import DkimSettings
from gateway.envelope import ClientInfo, Direction
from gateway.errors import ConfigError
from gateway.networks import NetworkSet
from gateway.pipeline.policy import Policy, ScannerProbe
from gateway.pipeline.runner import Pipeline, PolicyEntry
from gateway.pipeline.section import Section
from gateway.recipients import RecipientRouting
from gateway.values import Network, parse_network

if TYPE_CHECKING:
    from gateway.dkim.signer import DkimSigner

RELAY_ACCESS = "relay_access"  # the access policy: always first, never listed in [pipeline]


def _scanners(kind: str) -> frozenset[str]:
    """Names of the registered policies that are ``kind`` scanners (:attr:`Policy.scanner`)."""
    from policies import SCANNER_KINDS

    return frozenset(name for name, scanner in SCANNER_KINDS.items() if scanner == kind)


VIRUS_SCANNERS = _scanners("virus")
SPAM_SCANNERS = _scanners("spam")
# Tables read outside the policies: [pipeline] and [content_filter] here, [spam_levels] by the spam
# scanners' shared levels, [dkim] by gateway.dkim.settings.
OTHER_TABLES = frozenset(
    {"pipeline", "content_filter", "spam_levels", "dkim", "auth", "relay_recipient_ldap", "cluster"}
)


def known_tables() -> frozenset[str]:
    """Every table a config may have: each policy's ``[name]`` (from the registry) and :data:`OTHER_TABLES`."""
    from policies import REGISTRY

    return OTHER_TABLES | frozenset(name for name in REGISTRY if name != RELAY_ACCESS)


@dataclass(frozen=True, slots=True)
class ScanSwitches:
    """Which scanners are off, globally or for some recipients/clients."""

    disable_virus_checks: bool = False
    disable_spam_checks: bool = False
    bypass_domains: tuple[str, ...] = ()
    bypass_clients: NetworkSet = NetworkSet(())

    @classmethod
    def from_config(cls, config: Config) -> ScanSwitches:
        """Read ``[content_filter]``; raises ConfigError naming ``content_filter.<key>``."""
        section = Section(
            "content_filter",
            config.section("content_filter"),
            known={
                "disable_scanning",
                "disable_virus_checks",
                "disable_spam_checks",
                "bypass_domains",
                "bypass_clients",
            },
        )
        everything = section.flag("disable_scanning", False)
        networks: list[Network] = []
        for item in section.strings("bypass_clients"):
            try:
                networks.append(parse_network(item))
            except ValueError:
                raise ConfigError("content_filter.bypass_clients", item, "CIDR networks such as 10.0.0.0/8") from None
        return cls(
            disable_virus_checks=everything or section.flag("disable_virus_checks", False),
            disable_spam_checks=everything or section.flag("disable_spam_checks", False),
            bypass_domains=tuple(d.lower().rstrip(".") for d in section.strings("bypass_domains")),
            bypass_clients=NetworkSet(networks),
        )

    def skipped(self, client: ClientInfo, recipients: list[str]) -> frozenset[str]:
        """Names of the policies not to run for this message."""
        skip: set[str] = set()
        if self.disable_virus_checks:
            skip |= VIRUS_SCANNERS
        if self.disable_spam_checks:
            skip |= SPAM_SCANNERS
        if client.address in self.bypass_clients or (
            recipients and self.bypass_domains and all(self._bypassed(r) for r in recipients)
        ):
            skip |= VIRUS_SCANNERS | SPAM_SCANNERS
        return frozenset(skip)

    def _bypassed(self, recipient: str) -> bool:
        try:
            return domain_matches(split_mailbox(recipient).domain, self.bypass_domains)
        except ValueError:
            return False


@dataclass(slots=True)
class Pipelines:
    """The access pipeline, one content pipeline per direction, and the outbound DKIM signer.

    The signer runs last on outbound mail, after every header the gateway adds
    (maddy ``msgpipeline.Body`` order), so the signature covers them.
    """

    access: Pipeline
    inbound: Pipeline
    outbound: Pipeline
    switches: ScanSwitches
    signer: DkimSigner | None = None
    auth: AuthSettings | None = None  # None: no listener offers SMTP AUTH
    authenticator: Authenticator | None = None
    sender_logins: SenderLogins | None = None  # [auth] smtpd_sender_login_maps
    recipients: RecipientRouting | None = None  # virtual_alias_maps, relay_recipient_maps

    def for_direction(self, direction: Direction) -> Pipeline:
        """The content pipeline of ``direction``."""
        return self.outbound if direction is Direction.OUTBOUND else self.inbound

    def readiness_probes(self) -> list[ScannerProbe]:
        """The probes ``/readyz`` runs: one per fail-closed scanner that ``[content_filter]`` leaves on."""
        off = (VIRUS_SCANNERS if self.switches.disable_virus_checks else frozenset()) | (
            SPAM_SCANNERS if self.switches.disable_spam_checks else frozenset()
        )
        probes: dict[str, ScannerProbe] = {}
        for pipeline in (self.inbound, self.outbound):
            for policy in pipeline.policies:
                probe = policy.readiness_probe() if policy.name not in off else None
                if probe is not None:
                    probes[policy.name] = probe
        return list(probes.values())

    async def aclose(self) -> None:
        """Close every policy once."""
        seen: set[int] = set()
        for pipeline in (self.access, self.inbound, self.outbound):
            for policy in pipeline.policies:
                if id(policy) not in seen:
                    seen.add(id(policy))
                    await policy.aclose()


def build_pipelines(config: Config, *, prepare_keys: bool = True) -> Pipelines:
    """Construct every configured policy once and the pipelines that use them.

    ``prepare_keys`` generates missing DKIM keys (start and reload); ``check-config``
    validates without it.

    Raises:
        ConfigError: an unknown policy name, or a policy's own bad setting.
    """
    from policies import REGISTRY

    unknown = sorted(set(config.sections) - known_tables())
    if unknown:
        raise ConfigError(
            unknown[0],
            config.sections[unknown[0]],
            "not a known table; known: " + ", ".join(f"[{name}]" for name in sorted(known_tables())),
        )
    section = Section("pipeline", config.section("pipeline"), known={"inbound", "outbound"})
    built: dict[str, Policy] = {}

    def entries(key: str) -> list[PolicyEntry]:
        result = []
        for name in section.strings(key):
            if name not in REGISTRY or name == RELAY_ACCESS:
                allowed = ", ".join(sorted(n for n in REGISTRY if n != RELAY_ACCESS))
                raise ConfigError(f"pipeline.{key}", name, f"one of {allowed} (relay access always runs first)")
            if name not in built:
                built[name] = REGISTRY[name](config)
            result.append(PolicyEntry.of(built[name], concurrent=built[name].scanner is not None))
        return result

    settings = DkimSettings.from_config(config)
    signer = None
    if settings.enabled:
        from gateway.dkim.signer import DkimSigner  # imported late: cryptography and dkimpy weigh 14 MB

        signer = DkimSigner(settings)
        if prepare_keys:
            signer.prepare(logging.getLogger("gateway.dkim"))
    auth = AuthSettings.from_config(config)
    return Pipelines(
        access=Pipeline([REGISTRY[RELAY_ACCESS](config)]),
        inbound=Pipeline(entries("inbound")),
        outbound=Pipeline(entries("outbound")),
        switches=ScanSwitches.from_config(config),
        signer=signer,
        auth=auth,
        authenticator=build_authenticator(auth) if auth else None,
        sender_logins=(
            SenderLogins(auth.sender_login_maps, auth.check_from_header) if auth and auth.sender_login_maps else None
        ),
        recipients=RecipientRouting.from_config(config),
    )
