"""Migration from the ServerContainers mail-gateway image: its environment → a gateway TOML file.

``python -m gateway.migrate.servercontainers --output /etc/gateway/gateway.toml`` reads the
variables of that image (and the files it picked up from its two volumes) and
writes an equivalent configuration for this gateway; ``deploy/docker-entrypoint.sh``
runs it when no ``/etc/gateway/gateway.toml`` exists. A variable the gateway
cannot honour is *refused*: nothing is written, every refused variable is
named with the reason, and the exit status is 2. Nothing is silently dropped.

Source of the semantics below: ``github.com/ServerContainers/mail-gateway``
(stored copies read for this module): ``README.md`` of the 2023 ghcr.io
version, sections "Environment variables" (the full list of official
variables), "Volumes" and "Cheat Sheet / DKIM"; ``scripts/entrypoint.sh``
(what each variable does: ``${VAR+x}`` tests, so a variable that is *set*,
even to an empty string or ``false``, switches a feature) and
``scripts/dkim-helper.sh`` (``DKIM_DOMAINS``, keys from ``opendkim-genkey``
with its default selector ``default``).

Mapping (variable → gateway key):

* ``MAIL_FQDN`` → ``myhostname`` (lower case; ``.local`` appended to a bare
  host name as the image did; unset: the image's ``amavis.mail-gateway``).
* ``POSTFIX_SMTPD_BANNER``: honoured only when it is ``<MAIL_FQDN> ESMTP``
  (the gateway's fixed greeting); anything else is refused.
* ``AUTO_TRUST_NETWORKS`` (set = on) → ``auto_trust_networks``.
* ``mynetworks``: ``127.0.0.0/8`` plus ``ADDITIONAL_MYNETWORKS``; ``MYNETWORKS``
  replaces all of that, including the auto-trusted networks (as in the image).
* ``RELAYHOST`` (Postfix syntax, e.g. ``[smtp.example.com]:587``) → ``relayhost``.
* ``DISABLE_AMAVIS`` / ``DISABLE_VIRUS_CHECKS`` / ``DISABLE_SPAM_CHECKS`` (set =
  on) → ``[content_filter] disable_scanning`` / ``disable_virus_checks`` /
  ``disable_spam_checks``. The image scanned all mail with its own ClamAV and
  SpamAssassin; the gateway talks to external scanners, so scanning that is
  not disabled needs ``CLAMD_ADDRESS`` and ``RSPAMD_URL`` or
  ``SPAMD_ADDRESS`` (variables of this migration, not of the image), else it
  is refused. The scanners run for both directions, as amavis did.
* ``AMAVIS_SA_TAG_LEVEL_DEFLT`` / ``..._TAG2_...`` / ``..._KILL_...`` →
  ``[spam_levels]`` ``tag_level`` / ``tag2_level`` / ``kill_level``; unset, the
  image's values (undef, 5, 20) apply. amavis ``undef`` for the tag level
  means "always add the headers": written as -999.
* ``POSTFIX_SSL_IN_CERT`` / ``POSTFIX_SSL_IN_KEY`` (default
  ``/etc/postfix/tls/bundle.crt`` / ``cert.key``) → ``smtpd_tls_cert_file`` /
  ``smtpd_tls_key_file``; ``POSTFIX_SSL_OUT_CERT`` / ``POSTFIX_SSL_OUT_KEY``
  (default ``client.crt`` / ``client.key``) → ``smtp_tls_cert_file`` /
  ``smtp_tls_key_file``. The image used a pair only when both files existed.
* ``POSTFIX_SSL_IN_SECURITY_LEVEL``: ``may`` (STARTTLS offered), ``encrypt``
  (``require_tls`` on every listener), ``none`` (no TLS listener).
* Listeners: the image's ``0.0.0.0`` ports 25 (STARTTLS), 465 (implicit TLS)
  and 587 (STARTTLS, required), or the ``--listen`` option / ``GATEWAY_LISTEN``
  variable (``name=host:port/tls[/require_tls]`` entries, which the gateway
  itself also reads at start) to move them, e.g. for a container that does not
  run as root.
  ``POSTFIX_SSL_OUT_SECURITY_LEVEL`` → ``smtp_tls_security_level``
  (none, may, encrypt, verify).
* Files are looked up under ``--root`` (``/`` in the container) and the config
  names the file found there.
* ``/etc/postfix/tls/rootCA.crt`` → ``smtpd_tls_CAfile``;
  ``POSTFIX_SSL_IN_CERT_FINGERPRINTS`` (newline or comma separated
  ``AA:BB:... comment`` lines) → ``relay_clientcerts``.
* ``POSTFIX_QUEUE_LIFETIME_MAX`` / ``..._BOUNCE`` → ``maximal_queue_lifetime`` /
  ``bounce_queue_lifetime`` (a bare number is days, as in Postfix).
* ``POSTFIX_RELAY_DOMAINS`` → ``relay_domains``.
* ``DKIM_DOMAINS`` (space or comma separated) → ``[dkim] domains`` with the
  image's selector ``default``; existing keys in
  ``/etc/postfix/additional/opendkim/keys/<domain>/default.private`` are reused.
* ``/etc/postfix/additional/header_checks`` → ``[header_checks] file``;
  ``/etc/postfix/additional/transport`` → ``transport_maps``;
  ``/etc/postfix/tls/dh1024.pem`` / ``dh512.pem`` are not needed (a warning says so).

Refused: ``POSTFIX_MYDESTINATION`` (no local delivery), ``POSTFIX_RAW_CONFIG_*``
(raw main.cf lines), any other ``POSTFIX_``/``AMAVIS_``/``DKIM_``/``DISABLE_``
variable (not one of the image's), values the gateway has no equivalent for
(Postfix lookup tables, ``dane`` levels, MD5 fingerprints, ...), and whatever
:func:`gateway.config.build` or the policies reject.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.values import LISTEN_ENV, parse_listen
from gateway.errors import ConfigError, GatewayError

__all__ = ["Refusal", "Refused", "main", "to_toml", "translate"]

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
    "MAIL_FQDN", "POSTFIX_SMTPD_BANNER", "AUTO_TRUST_NETWORKS", "ADDITIONAL_MYNETWORKS", "MYNETWORKS",
    "RELAYHOST", "DISABLE_AMAVIS", "DISABLE_VIRUS_CHECKS", "DISABLE_SPAM_CHECKS",
    "AMAVIS_SA_TAG_LEVEL_DEFLT", "AMAVIS_SA_TAG2_LEVEL_DEFLT", "AMAVIS_SA_KILL_LEVEL_DEFLT",
    "POSTFIX_SSL_OUT_CERT", "POSTFIX_SSL_OUT_KEY", "POSTFIX_SSL_OUT_SECURITY_LEVEL",
    "POSTFIX_SSL_IN_CERT", "POSTFIX_SSL_IN_KEY", "POSTFIX_SSL_IN_SECURITY_LEVEL",
    "POSTFIX_SSL_IN_CERT_FINGERPRINTS", "POSTFIX_QUEUE_LIFETIME_BOUNCE", "POSTFIX_QUEUE_LIFETIME_MAX",
    "POSTFIX_RELAY_DOMAINS", "POSTFIX_MYDESTINATION", "DKIM_DOMAINS",
)
RAW_CONFIG_PREFIX = "POSTFIX_RAW_CONFIG_"
# Variables of this migration (the image had its scanners built in).
SCANNER_VARIABLES = ("CLAMD_ADDRESS", "RSPAMD_URL", "SPAMD_ADDRESS")
_IMAGE_NAMESPACES = ("POSTFIX_", "AMAVIS_", "DKIM_", "DISABLE_")
_SPAM_VARIABLES = {"tag_level": "AMAVIS_SA_TAG_LEVEL_DEFLT", "tag2_level": "AMAVIS_SA_TAG2_LEVEL_DEFLT",
                   "kill_level": "AMAVIS_SA_KILL_LEVEL_DEFLT"}
_OUT_LEVELS = ("none", "may", "encrypt", "verify")
_IN_LEVELS = ("none", "may", "encrypt")
_FQDN = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
_FALSE_LOOKING = ("", "0", "false", "no", "off")


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


def _is_set(environ: Mapping[str, str], name: str) -> bool:
    return name in environ


def _postfix_list(text: str) -> list[str]:
    """Postfix list syntax: items separated by commas and/or whitespace (postconf(5))."""
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def _is_lookup_table(item: str) -> bool:
    """``hash:/path``, ``/file/name`` or ``$parameter``: Postfix indirections the gateway has no equivalent of."""
    return item.startswith(("/", "$")) or bool(re.match(r"^[a-z]+:[/.]", item))


class _Translator:
    """One translation: collects the config, the warnings, the refusals and where each key came from."""

    def __init__(self, environ: Mapping[str, str], root: Path, state_dir: str, metrics_listen: str,
                 listen: str | None, listen_origin: str) -> None:
        self.env = environ
        self.root = root
        self.listen = listen
        self.listen_origin = listen_origin
        self.config: dict[str, Any] = {"state_dir": state_dir, "metrics_listen": metrics_listen}
        self.warnings: list[str] = []
        self.refusals: list[Refusal] = []
        self.origin: dict[str, str] = {}   # config key (dotted) → the variable or file it came from

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
        if not _is_set(self.env, name):
            return False
        if self.env[name].strip().lower() in _FALSE_LOOKING:
            self.warn(f"{name}={self.env[name]!r} is set, so it is ON: the image tested only whether the "
                      "variable exists; unset it to turn it off")
        return True

    # ---- the variables ----

    def run(self) -> None:
        self.unknown_variables()
        self.hostname()
        self.networks()
        self.relayhost()
        self.tls()
        self.client_certificates()
        self.lifetimes()
        self.domains()
        self.files()
        self.scanning()
        self.dkim()

    def unknown_variables(self) -> None:
        for name in sorted(self.env):
            if name.startswith(RAW_CONFIG_PREFIX):
                key = name[len(RAW_CONFIG_PREFIX):].lower()
                from gateway.config import KNOWN_KEYS  # imported late: keep `--help` light
                hint = (f"; the gateway has {key!r}: set GATEWAY_{key.upper()} instead" if key in KNOWN_KEYS
                        else "; set the equivalent gateway key in gateway.toml, see README 'Configuration'")
                self.refuse(name, "raw Postfix main.cf settings are not interpreted by the gateway" + hint)
            elif name.startswith(_IMAGE_NAMESPACES) and name not in IMAGE_VARIABLES:
                self.refuse(name, "not a variable of the ServerContainers mail-gateway image (README "
                                  "'Environment variables'); a misspelling or a fork's variable")
        if self.env.get("POSTFIX_MYDESTINATION", "").strip():
            self.refuse("POSTFIX_MYDESTINATION", "the gateway delivers no mail locally (no mydestination); "
                                                 "list the domains in POSTFIX_RELAY_DOMAINS and route them "
                                                 "with a transport file instead")

    def hostname(self) -> None:
        raw = self.env.get("MAIL_FQDN")
        if raw is None:
            raw = DEFAULT_MAIL_FQDN
            self.warn(f"MAIL_FQDN is unset: using the image's default {DEFAULT_MAIL_FQDN!r}; set MAIL_FQDN to "
                      "the name the gateway's IP address resolves to")
        name = raw.strip().lower().rstrip(".")
        if not _FQDN.fullmatch(name):
            self.refuse("MAIL_FQDN", f"{raw!r} is not a host name (letters, digits, '-' and '.'); the image "
                                     "would have deleted the other characters")
            return
        if "." not in name:
            self.warn(f"MAIL_FQDN={raw!r} has no dot: '.local' appended, as the image did")
            name += ".local"
        self.set("myhostname", name, "MAIL_FQDN")
        banner = self.env.get("POSTFIX_SMTPD_BANNER")
        if banner is not None:
            expanded = re.sub(r"\$(?:\{myhostname\}|myhostname\b|\{MAIL_FQDN\}|MAIL_FQDN\b)", name, banner.strip())
            if expanded != f"{name} ESMTP":
                self.refuse("POSTFIX_SMTPD_BANNER", f"the gateway's greeting is fixed as '220 {name} ESMTP' "
                                                    "(from MAIL_FQDN); unset the variable to accept that")

    def networks(self) -> None:
        networks = ["127.0.0.0/8"]
        origin = "ADDITIONAL_MYNETWORKS"
        auto_trust = self.switch("AUTO_TRUST_NETWORKS")
        if _is_set(self.env, "ADDITIONAL_MYNETWORKS"):
            networks += self.network_list("ADDITIONAL_MYNETWORKS")
        if _is_set(self.env, "MYNETWORKS"):
            origin = "MYNETWORKS"
            if _is_set(self.env, "ADDITIONAL_MYNETWORKS"):
                self.warn("ADDITIONAL_MYNETWORKS is ignored because MYNETWORKS is set (as in the image)")
            if auto_trust:
                self.warn("AUTO_TRUST_NETWORKS is ignored because MYNETWORKS replaces every trusted network "
                          "(as in the image)")
                auto_trust = False
            networks = self.network_list("MYNETWORKS")
        self.set("mynetworks", networks, origin)
        self.set("auto_trust_networks", auto_trust, "AUTO_TRUST_NETWORKS")
        if any(n in ("0.0.0.0/0", "[::]/0", "::/0") for n in networks):
            self.warn(f"{origin} contains a /0 network: the gateway is an open relay, as the image was")

    def network_list(self, name: str) -> list[str]:
        items = _postfix_list(self.env[name])
        for item in items:
            if _is_lookup_table(item) or item.startswith("!"):
                self.refuse(name, f"{item!r}: Postfix lookup tables, files and '!' exclusions are not "
                                  "supported; list the networks (CIDR) themselves")
        return [item for item in items if not (_is_lookup_table(item) or item.startswith("!"))]

    def relayhost(self) -> None:
        if not _is_set(self.env, "RELAYHOST"):
            return
        hops = _postfix_list(self.env["RELAYHOST"])
        self.set("relayhost", hops, "RELAYHOST")

    def tls(self) -> None:
        for direction, cert_key, key_key, cert_default, key_default in (
                ("IN", "smtpd_tls_cert_file", "smtpd_tls_key_file", "bundle.crt", "cert.key"),
                ("OUT", "smtp_tls_cert_file", "smtp_tls_key_file", "client.crt", "client.key")):
            cert_var, key_var = f"POSTFIX_SSL_{direction}_CERT", f"POSTFIX_SSL_{direction}_KEY"
            cert = self.env.get(cert_var) or str(TLS_DIR / cert_default)
            key = self.env.get(key_var) or str(TLS_DIR / key_default)
            explicit = [v for v in (cert_var, key_var) if self.env.get(v)]
            if self.exists(cert) and self.exists(key):
                self.set(cert_key, str(self.local(cert)), cert_var)
                self.set(key_key, str(self.local(key)), key_var)
            elif explicit:
                missing = " and ".join(p for p in (cert, key) if not self.exists(p))
                self.refuse(explicit[0], f"{missing} not found: the image then ran without this certificate; "
                                         "mount the files there or unset the variable")
        self.listeners()
        level_var = "POSTFIX_SSL_OUT_SECURITY_LEVEL"
        if _is_set(self.env, level_var):
            level = self.env[level_var].strip().lower()
            if level in _OUT_LEVELS:
                self.set("smtp_tls_security_level", level, level_var)
            else:
                self.refuse(level_var, f"{level!r}: the gateway knows only " + ", ".join(_OUT_LEVELS))

    def listeners(self) -> None:
        """The image's ports 25 (STARTTLS), 465 (implicit TLS) and 587 (STARTTLS required), or ``listen``.

        Either way shaped by the incoming level: ``encrypt`` requires TLS on every
        STARTTLS listener, ``none`` has no TLS (a TLS listener in ``listen`` is refused).
        """
        level_var = "POSTFIX_SSL_IN_SECURITY_LEVEL"
        level = self.env.get(level_var, "may").strip().lower() or "may"
        if level not in _IN_LEVELS:
            self.refuse(level_var, f"{level!r}: the gateway's listeners offer none, may or encrypt")
            level = "may"
        listeners: list[dict[str, Any]]
        if self.listen is not None:
            try:
                listeners = parse_listen(self.listen, self.listen_origin)
            except ConfigError as error:
                self.refuse(self.listen_origin, str(error))
                return
            for item in listeners:
                if level == "none" and item["tls"] != "none":
                    self.refuse(self.listen_origin, f"listener {item['name']} has tls={item['tls']}, but "
                                                    f"{level_var}=none turns TLS off")
                if level == "encrypt" and item["tls"] == "starttls":
                    item["require_tls"] = True
            self.set("listener", listeners, self.listen_origin)
            return
        if level == "none":
            listeners = [{"name": "smtp", "address": "0.0.0.0:25", "tls": "none"},
                         {"name": "submission", "address": "0.0.0.0:587", "tls": "none"}]
            self.warn(f"{level_var}=none: no TLS on any listener and no port 465 listener")
        else:
            listeners = [{"name": "smtp", "address": "0.0.0.0:25", "tls": "starttls",
                          "require_tls": level == "encrypt"},
                         {"name": "smtps", "address": "0.0.0.0:465", "tls": "implicit"},
                         {"name": "submission", "address": "0.0.0.0:587", "tls": "starttls", "require_tls": True}]
        self.set("listener", listeners, level_var)

    def client_certificates(self) -> None:
        ca_file = TLS_DIR / "rootCA.crt"
        fingerprints_var = "POSTFIX_SSL_IN_CERT_FINGERPRINTS"
        lines = [line.strip() for line in re.split(r"[\n,]", self.env.get(fingerprints_var, "")) if line.strip()]
        file_lines = []
        if self.exists(TLS_DIR / "relay_clientcerts"):
            # entrypoint.sh: the variable is appended to this file, and the file alone also enables it.
            file_lines = [line.strip() for line in self.local(TLS_DIR / "relay_clientcerts").read_text().splitlines()
                          if line.strip() and not line.lstrip().startswith("#")]
        if self.exists(ca_file):
            self.set("smtpd_tls_CAfile", str(self.local(ca_file)), str(ca_file))
            if lines or file_lines:
                self.warn(f"{ca_file}: the image let every client certificate signed by it relay "
                          "(permit_tls_all_clientcerts); the gateway lets only the listed fingerprints relay")
            else:
                self.refuse(str(ca_file), "the image let every client certificate signed by this CA relay "
                                          "(permit_tls_all_clientcerts); the gateway lets only listed certificates "
                                          f"relay: list their fingerprints in {fingerprints_var}")
        elif lines or file_lines:
            self.refuse(fingerprints_var, f"the gateway asks for client certificates only with a CA bundle to "
                                          f"verify them: mount {ca_file} (the clients' CA, or the self-signed "
                                          "client certificates themselves)")
        if lines or file_lines:
            self.set("relay_clientcerts", file_lines + lines, fingerprints_var)

    def lifetimes(self) -> None:
        for variable, key in (("POSTFIX_QUEUE_LIFETIME_MAX", "maximal_queue_lifetime"),
                              ("POSTFIX_QUEUE_LIFETIME_BOUNCE", "bounce_queue_lifetime")):
            value = self.env.get(variable, "").strip()
            if value:
                # postconf(5): the default time unit of both parameters is d (days).
                self.set(key, f"{value}d" if re.fullmatch(r"\d+", value) else value, variable)

    def domains(self) -> None:
        if not _is_set(self.env, "POSTFIX_RELAY_DOMAINS"):
            return
        items = _postfix_list(self.env["POSTFIX_RELAY_DOMAINS"])
        for item in items:
            if _is_lookup_table(item):
                self.refuse("POSTFIX_RELAY_DOMAINS", f"{item!r}: Postfix lookup tables, files and $parameters are "
                                                     "not supported; list the domains")
        domains = [item for item in items if not _is_lookup_table(item)]
        self.set("relay_domains", domains, "POSTFIX_RELAY_DOMAINS")
        plain = [d for d in domains if not d.startswith(".")]
        if plain:
            self.warn("POSTFIX_RELAY_DOMAINS: " + ", ".join(plain) + " match(es) that domain only; Postfix "
                      "before compatibility level 3 also matched subdomains: add '." + plain[0] + "' style "
                      "entries if you relied on that")

    def files(self) -> None:
        for name in ("dh1024.pem", "dh512.pem"):
            if self.exists(TLS_DIR / name):
                self.warn(f"{TLS_DIR / name} is not used: the gateway's TLS (Python ssl) negotiates ECDHE "
                          "key exchange and needs no DH parameter file")
        header_checks = ADDITIONAL_DIR / "header_checks"
        if self.exists(header_checks):
            self.set("header_checks.file", str(self.local(header_checks)), str(header_checks))
        transport = ADDITIONAL_DIR / "transport"
        if self.exists(transport):
            maps = self.transport_maps(str(transport), self.local(transport).read_text())
            if maps:
                self.set("transport_maps", maps, str(transport))

    def transport_maps(self, name: str, text: str) -> dict[str, str]:
        """A Postfix transport(5) file: ``domain [transport]:[nexthop]`` lines, smtp/relay only."""
        maps: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{name}:{number}"
            if line[0].isspace():
                self.refuse(where, "continuation lines are not supported; put each entry on one line")
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                self.refuse(where, "expected 'domain transport:nexthop'")
                continue
            pattern, result = parts[0], parts[1].strip()
            transport, sep, nexthop = result.partition(":")
            if not sep:
                transport, nexthop = "", result
            if "@" in pattern or pattern == "*":
                self.refuse(where, f"{pattern!r}: the gateway routes by recipient domain only (no addresses, "
                                   "no '*'; use RELAYHOST for the default route)")
            elif transport not in ("", "smtp", "relay"):
                self.refuse(where, f"transport {transport!r}: the gateway delivers over SMTP only")
            elif not nexthop:
                self.refuse(where, "an entry without a next hop only selects a transport; leave it out")
            else:
                maps[pattern.lower()] = nexthop
        return maps

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
            self.set(f"content_filter.{key}", flag, "DISABLE_" + {"disable_scanning": "AMAVIS",
                                                                  "disable_virus_checks": "VIRUS_CHECKS",
                                                                  "disable_spam_checks": "SPAM_CHECKS"}[key])
        scanners: list[str] = []
        clamd = self.env.get("CLAMD_ADDRESS", "").strip()
        if clamd:
            self.set("antivirus.clamd", clamd, "CLAMD_ADDRESS")
            scanners.append("antivirus")
        elif not (disable_all or disable_virus):
            self.refuse("DISABLE_VIRUS_CHECKS", "unset, so the image scanned every message with its built-in "
                                                "ClamAV; the gateway needs an external clamd: set CLAMD_ADDRESS "
                                                "(tcp:clamav:3310 or unix:/path), or set DISABLE_VIRUS_CHECKS=1")
        for variable, section, key in (("RSPAMD_URL", "rspamd", "url"), ("SPAMD_ADDRESS", "spamassassin", "address")):
            value = self.env.get(variable, "").strip()
            if value:
                self.set(f"{section}.{key}", value, variable)
                scanners.append(section)
        if not {"rspamd", "spamassassin"} & set(scanners) and not (disable_all or disable_spam):
            self.refuse("DISABLE_SPAM_CHECKS", "unset, so the image scored every message with its built-in "
                                               "SpamAssassin; the gateway needs an external scanner: set "
                                               "RSPAMD_URL (http://rspamd:11333) or SPAMD_ADDRESS (host:783), "
                                               "or set DISABLE_SPAM_CHECKS=1")
        self.spam_levels(disable_all)
        pipeline = (["header_checks"] if "header_checks" in self.config else []) + scanners
        if pipeline:
            # amavis was Postfix's content_filter for all mail: scan both directions.
            self.set("pipeline.inbound", pipeline, "DISABLE_AMAVIS")
            self.set("pipeline.outbound", list(pipeline), "DISABLE_AMAVIS")

    def spam_levels(self, disabled: bool) -> None:
        given = [v for v in _SPAM_VARIABLES.values() if _is_set(self.env, v)]
        if disabled:
            if given:
                self.warn(", ".join(given) + " ignored: DISABLE_AMAVIS is set (as in the image)")
            return
        for key, variable in _SPAM_VARIABLES.items():
            text = self.env.get(variable, IMAGE_SPAM_LEVELS[key]).strip()
            if text == "undef" and key == "tag_level":
                self.set(f"spam_levels.{key}", UNDEF_TAG_LEVEL, variable)
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                self.refuse(variable, f"{text!r} is not a number" + (" (undef is understood for the tag level "
                                                                      "only)" if text == "undef" else ""))
                continue
            self.set(f"spam_levels.{key}", value, variable)

    def dkim(self) -> None:
        domains = _postfix_list(self.env.get("DKIM_DOMAINS", ""))
        if not domains:
            return
        self.set("dkim.domains", domains, "DKIM_DOMAINS")
        self.set("dkim.selector", DKIM_SELECTOR, "DKIM_DOMAINS")
        opendkim = ADDITIONAL_DIR / "opendkim"
        if not self.exists(opendkim):
            self.warn(f"DKIM_DOMAINS: the image signed only when {opendkim} existed; the gateway signs for "
                      f"{', '.join(domains)} and creates missing keys (selector {DKIM_SELECTOR!r}) under "
                      "state_dir/dkim: publish the DNS records it logs, or see `gateway dkim show`")
            return
        overrides: dict[str, dict[str, str]] = {}
        for domain in domains:
            key = opendkim / "keys" / domain / f"{DKIM_SELECTOR}.private"
            if self.exists(key):
                overrides[domain.lower().rstrip(".")] = {"rsa_key": str(self.local(key))}
            else:
                self.warn(f"DKIM_DOMAINS: no key {key}; the gateway creates one for {domain}: publish its record")
        if overrides:
            self.set("dkim.domain", overrides, "DKIM_DOMAINS")

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
                policy_class: Any = REGISTRY[name]   # concrete classes take the Config
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


def translate(environ: Mapping[str, str], *, root: Path = Path("/"), state_dir: str = STATE_DIR,
              metrics_listen: str = METRICS_LISTEN, listen: str | None = None,
              listen_origin: str = "--listen") -> tuple[dict[str, Any], list[str]]:
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
    translator = _Translator(environ, root, state_dir, metrics_listen, listen, listen_origin)
    translator.run()
    if not translator.refusals:
        translator.validate()
    if translator.refusals:
        raise Refused(translator.refusals)
    return translator.config, translator.warnings


# ---- a small TOML writer (tomllib reads only) ----

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    """A TOML basic string (TOML 1.0 §String): escapes for quote, backslash and control characters."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)   # "5.0", "1e-05": both valid TOML floats
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _emit(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    for name, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(str(name))} = {_value(value)}")
    for name, value in table.items():
        if isinstance(value, Mapping):
            lines.append("")
            lines.append("[" + ".".join(_key(p) for p in [*path, str(name)]) + "]")
            _emit(value, [*path, str(name)], lines)
    for name, value in table.items():
        if _is_table_array(value):
            for item in value:
                lines.append("")
                lines.append("[[" + ".".join(_key(p) for p in [*path, str(name)]) + "]]")
                _emit(item, [*path, str(name)], lines)


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize ``data`` as TOML 1.0: strings, booleans, ints, floats, lists, tables, arrays of tables.

    Keys of a table are written before its sub-tables, so the output reads back
    (``tomllib.loads``) to the same dict.

    Raises:
        TypeError: for a value of another type (None, dates, objects).
    """
    lines: list[str] = []
    _emit(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


# ---- command line ----

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.migrate.servercontainers",
        description="Write a gateway config from the ServerContainers mail-gateway environment variables.")
    parser.add_argument("--output", required=True, help="where to write the TOML file ('-' for stdout)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--state-dir", default=STATE_DIR, help=f"state_dir of the config (default {STATE_DIR})")
    parser.add_argument("--metrics-listen", default=METRICS_LISTEN,
                        help=f"metrics_listen of the config (default {METRICS_LISTEN}; '' = off)")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="look for the image's volume files (/etc/postfix/...) under this folder")
    parser.add_argument("--listen", default=None, metavar="LIST",
                        help="listeners as name=host:port/tls[/require_tls] entries, e.g. "
                             "'smtp=0.0.0.0:2525/starttls smtps=0.0.0.0:4465/implicit' (default: "
                             "$GATEWAY_LISTEN, else smtp=0.0.0.0:25, smtps=0.0.0.0:465, submission=0.0.0.0:587)")
    return parser


def _header(warnings: list[str]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"# Generated by `python -m gateway.migrate.servercontainers` on {stamp} from the ServerContainers",
             "# mail-gateway environment variables. Edit freely; delete this file to generate it again.",
             "# GATEWAY_<KEY> environment variables still override top-level keys at start."]
    lines += [f"# warning: {w}".replace("\n", " ") for w in warnings]
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> int:
    """Translate ``os.environ`` and write the TOML file.

    Returns:
        0 written; 1 the output exists (without ``--force``) or cannot be written;
        2 a variable was refused (each printed to stderr with its reason).
    """
    args = _parser().parse_args(argv)
    try:
        listen, origin = args.listen, "--listen"
        if listen is None and os.environ.get(LISTEN_ENV, "").strip():
            listen, origin = os.environ[LISTEN_ENV], LISTEN_ENV
        config, warnings = translate(os.environ, root=args.root, state_dir=args.state_dir,
                                     metrics_listen=args.metrics_listen, listen=listen, listen_origin=origin)
    except Refused as refused:
        for refusal in refused.refusals:
            print(f"gateway seed_env: refused {refusal.variable}: {refusal.reason}", file=sys.stderr)
        print(f"gateway seed_env: {len(refused.refusals)} setting(s) of the ServerContainers image cannot be "
              "honoured; nothing written. Change them, or write gateway.toml yourself (deploy/README.md).",
              file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"gateway seed_env: warning: {warning}", file=sys.stderr)
    text = _header(warnings) + to_toml(config)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    output = Path(args.output)
    if output.exists() and not args.force:
        print(f"gateway seed_env: {output} exists; use --force to replace it", file=sys.stderr)
        return 1
    tmp: str | None = None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gateway.toml.", dir=output.parent)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        os.chmod(tmp, 0o640)
        os.replace(tmp, output)   # never a half-written config for the entrypoint to find
    except OSError as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        print(f"gateway seed_env: cannot write {output}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"gateway seed_env: wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
