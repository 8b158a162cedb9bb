"""One translation of the image's environment into a gateway config: the variables, in order, then validation."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.errors import ConfigError
from gateway.migrate.servercontainers import volumes
from gateway.migrate.servercontainers.image import (
    DEFAULT_MAIL_FQDN,
    FALSE_LOOKING,
    FQDN,
    IMAGE_NAMESPACES,
    IMAGE_SPAM_LEVELS,
    IMAGE_VARIABLES,
    METRICS_LISTEN,
    RAW_CONFIG_PREFIX,
    SPAM_VARIABLES,
    STATE_DIR,
    UNDEF_TAG_LEVEL,
    Refusal,
    Refused,
    is_lookup_table,
    is_set,
    postfix_list,
)


class Translator:
    """One translation: collects the config, the warnings, the refusals and where each key came from."""

    def __init__(
        self,
        environ: Mapping[str, str],
        root: Path,
        state_dir: str,
        metrics_listen: str,
        listen: str | None,
        listen_origin: str,
    ) -> None:
        self.env = environ
        self.root = root
        self.listen = listen
        self.listen_origin = listen_origin
        self.config: dict[str, Any] = {"state_dir": state_dir, "metrics_listen": metrics_listen}
        self.warnings: list[str] = []
        self.refusals: list[Refusal] = []
        self.origin: dict[str, str] = {}  # config key (dotted) → the variable or file it came from

    # ---- helpers ----

    def exists(self, path: str | PurePosixPath) -> bool:
        """Does ``path`` (absolute, inside the container) exist under ``root``?"""
        return (self.root / str(path).lstrip("/")).exists()

    def local(self, path: str | PurePosixPath) -> Path:
        """``path`` as seen from this process (under ``root``)."""
        return self.root / str(path).lstrip("/")

    def refuse(self, variable: str, reason: str) -> None:
        self.refusals.append(Refusal(variable, reason))

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def set(self, key: str, value: Any, origin: str) -> None:
        """Set a top-level key, or ``section.key`` inside a table."""
        if "." in key:
            section, _, name = key.partition(".")
            self.config.setdefault(section, {})[name] = value
        else:
            self.config[key] = value
        self.origin[key] = origin

    def switch(self, name: str) -> bool:
        """An on/off variable of the image: *set* means on (``${VAR+x}``), whatever the value."""
        if not is_set(self.env, name):
            return False
        if self.env[name].strip().lower() in FALSE_LOOKING:
            self.warn(
                f"{name}={self.env[name]!r} is set, so it is ON: the image tested only whether the "
                "variable exists; unset it to turn it off"
            )
        return True

    # ---- the variables ----

    def run(self) -> None:
        self.unknown_variables()
        self.hostname()
        self.networks()
        self.relayhost()
        volumes.tls(self)
        volumes.client_certificates(self)
        self.lifetimes()
        self.domains()
        volumes.files(self)
        self.scanning()
        volumes.dkim(self)

    def unknown_variables(self) -> None:
        for name in sorted(self.env):
            if name.startswith(RAW_CONFIG_PREFIX):
                key = name[len(RAW_CONFIG_PREFIX) :].lower()
                from gateway.config import KNOWN_KEYS  # imported late: keep `--help` light

                hint = (
                    f"; the gateway has {key!r}: set GATEWAY_{key.upper()} instead"
                    if key in KNOWN_KEYS
                    else "; set the equivalent gateway key in gateway.toml, see README 'Configuration'"
                )
                self.refuse(name, "raw Postfix main.cf settings are not interpreted by the gateway" + hint)
            elif name.startswith(IMAGE_NAMESPACES) and name not in IMAGE_VARIABLES:
                self.refuse(
                    name,
                    "not a variable of the ServerContainers mail-gateway image (README "
                    "'Environment variables'); a misspelling or a fork's variable",
                )
        if self.env.get("POSTFIX_MYDESTINATION", "").strip():
            self.refuse(
                "POSTFIX_MYDESTINATION",
                "the gateway delivers no mail locally (no mydestination); "
                "list the domains in POSTFIX_RELAY_DOMAINS and route them "
                "with a transport file instead",
            )

    def hostname(self) -> None:
        raw = self.env.get("MAIL_FQDN")
        if raw is None:
            raw = DEFAULT_MAIL_FQDN
            self.warn(
                f"MAIL_FQDN is unset: using the image's default {DEFAULT_MAIL_FQDN!r}; set MAIL_FQDN to "
                "the name the gateway's IP address resolves to"
            )
        name = raw.strip().lower().rstrip(".")
        if not FQDN.fullmatch(name):
            self.refuse(
                "MAIL_FQDN",
                f"{raw!r} is not a host name (letters, digits, '-' and '.'); the image "
                "would have deleted the other characters",
            )
            return
        if "." not in name:
            self.warn(f"MAIL_FQDN={raw!r} has no dot: '.local' appended, as the image did")
            name += ".local"
        self.set("myhostname", name, "MAIL_FQDN")
        banner = self.env.get("POSTFIX_SMTPD_BANNER")
        if banner is not None:
            expanded = re.sub(r"\$(?:\{myhostname\}|myhostname\b|\{MAIL_FQDN\}|MAIL_FQDN\b)", name, banner.strip())
            if expanded != f"{name} ESMTP":
                self.refuse(
                    "POSTFIX_SMTPD_BANNER",
                    f"the gateway's greeting is fixed as '220 {name} ESMTP' "
                    "(from MAIL_FQDN); unset the variable to accept that",
                )

    def networks(self) -> None:
        networks = ["127.0.0.0/8"]
        origin = "ADDITIONAL_MYNETWORKS"
        auto_trust = self.switch("AUTO_TRUST_NETWORKS")
        if is_set(self.env, "ADDITIONAL_MYNETWORKS"):
            networks += self.network_list("ADDITIONAL_MYNETWORKS")
        if is_set(self.env, "MYNETWORKS"):
            origin = "MYNETWORKS"
            if is_set(self.env, "ADDITIONAL_MYNETWORKS"):
                self.warn("ADDITIONAL_MYNETWORKS is ignored because MYNETWORKS is set (as in the image)")
            if auto_trust:
                self.warn(
                    "AUTO_TRUST_NETWORKS is ignored because MYNETWORKS replaces every trusted network (as in the image)"
                )
                auto_trust = False
            networks = self.network_list("MYNETWORKS")
        self.set("mynetworks", networks, origin)
        self.set("auto_trust_networks", auto_trust, "AUTO_TRUST_NETWORKS")
        if any(n in ("0.0.0.0/0", "[::]/0", "::/0") for n in networks):
            self.warn(f"{origin} contains a /0 network: the gateway is an open relay, as the image was")

    def network_list(self, name: str) -> list[str]:
        items = postfix_list(self.env[name])
        for item in items:
            if is_lookup_table(item) or item.startswith("!"):
                self.refuse(
                    name,
                    f"{item!r}: Postfix lookup tables, files and '!' exclusions are not "
                    "supported; list the networks (CIDR) themselves",
                )
        return [item for item in items if not (is_lookup_table(item) or item.startswith("!"))]

    def relayhost(self) -> None:
        if not is_set(self.env, "RELAYHOST"):
            return
        hops = postfix_list(self.env["RELAYHOST"])
        self.set("relayhost", hops, "RELAYHOST")

    def lifetimes(self) -> None:
        for variable, key in (
            ("POSTFIX_QUEUE_LIFETIME_MAX", "maximal_queue_lifetime"),
            ("POSTFIX_QUEUE_LIFETIME_BOUNCE", "bounce_queue_lifetime"),
        ):
            value = self.env.get(variable, "").strip()
            if value:
                # postconf(5): the default time unit of both parameters is d (days).
                self.set(key, f"{value}d" if re.fullmatch(r"\d+", value) else value, variable)

    def domains(self) -> None:
        if not is_set(self.env, "POSTFIX_RELAY_DOMAINS"):
            return
        items = postfix_list(self.env["POSTFIX_RELAY_DOMAINS"])
        for item in items:
            if is_lookup_table(item):
                self.refuse(
                    "POSTFIX_RELAY_DOMAINS",
                    f"{item!r}: Postfix lookup tables, files and $parameters are not supported; list the domains",
                )
        domains = [item for item in items if not is_lookup_table(item)]
        self.set("relay_domains", domains, "POSTFIX_RELAY_DOMAINS")
        plain = [d for d in domains if not d.startswith(".")]
        if plain:
            self.warn(
                "POSTFIX_RELAY_DOMAINS: " + ", ".join(plain) + " match(es) that domain only; Postfix "
                "before compatibility level 3 also matched subdomains: add '." + plain[0] + "' style "
                "entries if you relied on that"
            )

    def scanning(self) -> None:
        disable_all = self.switch("DISABLE_AMAVIS")
        disable_virus = self.switch("DISABLE_VIRUS_CHECKS")
        disable_spam = self.switch("DISABLE_SPAM_CHECKS")
        filters: dict[str, bool] = {}
        if disable_all:
            filters["disable_scanning"] = True
        if disable_virus:
            filters["disable_virus_checks"] = True
        if disable_spam:
            filters["disable_spam_checks"] = True
        for key, flag in filters.items():
            self.set(
                f"content_filter.{key}",
                flag,
                "DISABLE_"
                + {
                    "disable_scanning": "AMAVIS",
                    "disable_virus_checks": "VIRUS_CHECKS",
                    "disable_spam_checks": "SPAM_CHECKS",
                }[key],
            )
        scanners: list[str] = []
        clamd = self.env.get("CLAMD_ADDRESS", "").strip()
        if clamd:
            self.set("antivirus.clamd", clamd, "CLAMD_ADDRESS")
            scanners.append("antivirus")
        elif not (disable_all or disable_virus):
            self.refuse(
                "DISABLE_VIRUS_CHECKS",
                "unset, so the image scanned every message with its built-in "
                "ClamAV; the gateway needs an external clamd: set CLAMD_ADDRESS "
                "(tcp:clamav:3310 or unix:/path), or set DISABLE_VIRUS_CHECKS=1",
            )
        for variable, section, key in (("RSPAMD_URL", "rspamd", "url"), ("SPAMD_ADDRESS", "spamassassin", "address")):
            value = self.env.get(variable, "").strip()
            if value:
                self.set(f"{section}.{key}", value, variable)
                scanners.append(section)
        if not {"rspamd", "spamassassin"} & set(scanners) and not (disable_all or disable_spam):
            self.refuse(
                "DISABLE_SPAM_CHECKS",
                "unset, so the image scored every message with its built-in "
                "SpamAssassin; the gateway needs an external scanner: set "
                "RSPAMD_URL (http://rspamd:11333) or SPAMD_ADDRESS (host:783), "
                "or set DISABLE_SPAM_CHECKS=1",
            )
        self.spam_levels(disable_all)
        pipeline = (["header_checks"] if "header_checks" in self.config else []) + scanners
        if pipeline:
            # amavis was Postfix's content_filter for all mail: scan both directions.
            self.set("pipeline.inbound", pipeline, "DISABLE_AMAVIS")
            self.set("pipeline.outbound", list(pipeline), "DISABLE_AMAVIS")

    def spam_levels(self, disabled: bool) -> None:
        given = [v for v in SPAM_VARIABLES.values() if is_set(self.env, v)]
        if disabled:
            if given:
                self.warn(", ".join(given) + " ignored: DISABLE_AMAVIS is set (as in the image)")
            return
        for key, variable in SPAM_VARIABLES.items():
            text = self.env.get(variable, IMAGE_SPAM_LEVELS[key]).strip()
            if text == "undef" and key == "tag_level":
                self.set(f"spam_levels.{key}", UNDEF_TAG_LEVEL, variable)
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                self.refuse(
                    variable,
                    f"{text!r} is not a number"
                    + (" (undef is understood for the tag level only)" if text == "undef" else ""),
                )
                continue
            self.set(f"spam_levels.{key}", value, variable)

    # ---- validation ----

    def validate(self) -> None:
        """Run the gateway's own validation; a ConfigError becomes a refusal of the key's variable.

        The same checks as at start, without its side effects: every policy named in
        ``[pipeline]`` is constructed (they only validate their table; header_checks
        reads its file), and ``[dkim]`` is validated without creating keys.
        """
        from gateway.config import build
        from gateway.dkim.settings import DkimSettings
        from gateway.pipeline.build import ScanSwitches
        from gateway.pipeline.section import Section
        from policies import REGISTRY
        from policies.spam.levels import SpamLevels

        try:
            config = build(self.config, Path(self.config["state_dir"]))
            pipeline = Section("pipeline", config.section("pipeline"), known={"inbound", "outbound"})
            for name in dict.fromkeys(pipeline.strings("inbound") + pipeline.strings("outbound")):
                if name not in REGISTRY:
                    raise ConfigError("pipeline.inbound", name, "one of " + ", ".join(sorted(REGISTRY)))
                policy_class: Any = REGISTRY[name]  # concrete classes take the Config
                policy_class(config)
            ScanSwitches.from_config(config)
            SpamLevels.from_config(config)
            DkimSettings.from_config(config)
        except ConfigError as error:
            self.refuse(self.variable_of(error.key), f"the gateway rejects {error}")

    def variable_of(self, key: str) -> str:
        """The variable (or file) that produced config key ``key`` (``a.b``, ``a[0].b`` or ``a``)."""
        for candidate in (key, re.split(r"[.\[]", key)[0]):
            if candidate in self.origin:
                return self.origin[candidate]
        return key


def translate(
    environ: Mapping[str, str],
    *,
    root: Path = Path("/"),
    state_dir: str = STATE_DIR,
    metrics_listen: str = METRICS_LISTEN,
    listen: str | None = None,
    listen_origin: str = "--listen",
) -> tuple[dict[str, Any], list[str]]:
    """Translate the ServerContainers mail-gateway variables into a gateway config (see module docstring).

    Args:
        environ: the environment (only the image's variables and ``CLAMD_ADDRESS``,
            ``RSPAMD_URL``, ``SPAMD_ADDRESS`` are read).
        root: where the image's volume files (``/etc/postfix/tls``, ``/etc/postfix/additional``)
            are looked up: ``root / "etc/postfix/..."``; the config names the files found there
            (``/etc/postfix/...`` itself when ``root`` is ``/``, as in the container).
        state_dir: the gateway's ``state_dir``.
        metrics_listen: ``metrics_listen`` (all interfaces by default so Prometheus in another
            container can scrape it).
        listen: the listeners as ``name=host:port/tls[/require_tls]`` entries
            (:func:`gateway.config.parse_listen`) instead of the image's 25/465/587 on 0.0.0.0.
        listen_origin: what ``listen`` came from, named in refusals (``--listen``, ``GATEWAY_LISTEN``).

    Returns:
        The configuration as a TOML-ready dict (strings, numbers, booleans, lists and tables),
        already validated by :func:`gateway.config.build` and the policies, and warnings about
        behaviour that differs in detail from the image.

    Raises:
        Refused: naming every variable the gateway cannot honour, with the reason.
    """
    translator = Translator(environ, root, state_dir, metrics_listen, listen, listen_origin)
    translator.run()
    if not translator.refusals:
        translator.validate()
    if translator.refusals:
        raise Refused(translator.refusals)
    return translator.config, translator.warnings
