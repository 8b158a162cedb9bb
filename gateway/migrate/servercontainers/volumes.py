"""The image's volume files (certificates, client CA and fingerprints, header checks, transport,
DKIM keys) and its listeners, as steps of a :class:`~gateway.migrate.servercontainers.translator.Translator`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError
from gateway.migrate.servercontainers.image import (
    ADDITIONAL_DIR,
    DKIM_SELECTOR,
    IN_LEVELS,
    OUT_LEVELS,
    TLS_DIR,
    is_set,
    postfix_list,
)
from gateway.values import parse_listen

if TYPE_CHECKING:
    from gateway.migrate.servercontainers.translator import Translator


def tls(t: Translator) -> None:
    for direction, cert_key, key_key, cert_default, key_default in (
        ("IN", "smtpd_tls_cert_file", "smtpd_tls_key_file", "bundle.crt", "cert.key"),
        ("OUT", "smtp_tls_cert_file", "smtp_tls_key_file", "client.crt", "client.key"),
    ):
        cert_var, key_var = f"POSTFIX_SSL_{direction}_CERT", f"POSTFIX_SSL_{direction}_KEY"
        cert = t.env.get(cert_var) or str(TLS_DIR / cert_default)
        key = t.env.get(key_var) or str(TLS_DIR / key_default)
        explicit = [v for v in (cert_var, key_var) if t.env.get(v)]
        if t.exists(cert) and t.exists(key):
            t.set(cert_key, str(t.local(cert)), cert_var)
            t.set(key_key, str(t.local(key)), key_var)
        elif explicit:
            missing = " and ".join(p for p in (cert, key) if not t.exists(p))
            t.refuse(
                explicit[0],
                f"{missing} not found: the image then ran without this certificate; "
                "mount the files there or unset the variable",
            )
    listeners(
        t,
    )
    level_var = "POSTFIX_SSL_OUT_SECURITY_LEVEL"
    if is_set(t.env, level_var):
        level = t.env[level_var].strip().lower()
        if level in OUT_LEVELS:
            t.set("smtp_tls_security_level", level, level_var)
        else:
            t.refuse(level_var, f"{level!r}: the gateway knows only " + ", ".join(OUT_LEVELS))


def listeners(t: Translator) -> None:
    """The image's ports 25 (STARTTLS), 465 (implicit TLS) and 587 (STARTTLS required), or ``listen``.

    Either way shaped by the incoming level: ``encrypt`` requires TLS on every
    STARTTLS listener, ``none`` has no TLS (a TLS listener in ``listen`` is refused).
    """
    level_var = "POSTFIX_SSL_IN_SECURITY_LEVEL"
    level = t.env.get(level_var, "may").strip().lower() or "may"
    if level not in IN_LEVELS:
        t.refuse(level_var, f"{level!r}: the gateway's listeners offer none, may or encrypt")
        level = "may"
    listeners: list[dict[str, Any]]
    if t.listen is not None:
        try:
            listeners = parse_listen(t.listen, t.listen_origin)
        except ConfigError as error:
            t.refuse(t.listen_origin, str(error))
            return
        for item in listeners:
            if level == "none" and item["tls"] != "none":
                t.refuse(
                    t.listen_origin,
                    f"listener {item['name']} has tls={item['tls']}, but {level_var}=none turns TLS off",
                )
            if level == "encrypt" and item["tls"] == "starttls":
                item["require_tls"] = True
        t.set("listener", listeners, t.listen_origin)
        return
    if level == "none":
        listeners = [
            {"name": "smtp", "address": "0.0.0.0:25", "tls": "none"},
            {"name": "submission", "address": "0.0.0.0:587", "tls": "none"},
        ]
        t.warn(f"{level_var}=none: no TLS on any listener and no port 465 listener")
    else:
        listeners = [
            {"name": "smtp", "address": "0.0.0.0:25", "tls": "starttls", "require_tls": level == "encrypt"},
            {"name": "smtps", "address": "0.0.0.0:465", "tls": "implicit"},
            {"name": "submission", "address": "0.0.0.0:587", "tls": "starttls", "require_tls": True},
        ]
    t.set("listener", listeners, level_var)


def client_certificates(t: Translator) -> None:
    ca_file = TLS_DIR / "rootCA.crt"
    fingerprints_var = "POSTFIX_SSL_IN_CERT_FINGERPRINTS"
    lines = [line.strip() for line in re.split(r"[\n,]", t.env.get(fingerprints_var, "")) if line.strip()]
    file_lines = []
    if t.exists(TLS_DIR / "relay_clientcerts"):
        # entrypoint.sh: the variable is appended to this file, and the file alone also enables it.
        file_lines = [
            line.strip()
            for line in t.local(TLS_DIR / "relay_clientcerts").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if t.exists(ca_file):
        t.set("smtpd_tls_CAfile", str(t.local(ca_file)), str(ca_file))
        if lines or file_lines:
            t.warn(
                f"{ca_file}: the image let every client certificate signed by it relay "
                "(permit_tls_all_clientcerts); the gateway lets only the listed fingerprints relay"
            )
        else:
            t.refuse(
                str(ca_file),
                "the image let every client certificate signed by this CA relay "
                "(permit_tls_all_clientcerts); the gateway lets only listed certificates "
                f"relay: list their fingerprints in {fingerprints_var}",
            )
    elif lines or file_lines:
        t.refuse(
            fingerprints_var,
            f"the gateway asks for client certificates only with a CA bundle to "
            f"verify them: mount {ca_file} (the clients' CA, or the self-signed "
            "client certificates themselves)",
        )
    if lines or file_lines:
        t.set("relay_clientcerts", file_lines + lines, fingerprints_var)


def files(t: Translator) -> None:
    for name in ("dh1024.pem", "dh512.pem"):
        if t.exists(TLS_DIR / name):
            t.warn(
                f"{TLS_DIR / name} is not used: the gateway's TLS (Python ssl) negotiates ECDHE "
                "key exchange and needs no DH parameter file"
            )
    header_checks = ADDITIONAL_DIR / "header_checks"
    if t.exists(header_checks):
        t.set("header_checks.file", str(t.local(header_checks)), str(header_checks))
    transport = ADDITIONAL_DIR / "transport"
    if t.exists(transport):
        maps = transport_maps(t, str(transport), t.local(transport).read_text())
        if maps:
            t.set("transport_maps", maps, str(transport))


def transport_maps(t: Translator, name: str, text: str) -> dict[str, str]:
    """A Postfix transport(5) file: ``domain [transport]:[nexthop]`` lines, smtp/relay only."""
    maps: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{name}:{number}"
        if line[0].isspace():
            t.refuse(where, "continuation lines are not supported; put each entry on one line")
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            t.refuse(where, "expected 'domain transport:nexthop'")
            continue
        pattern, result = parts[0], parts[1].strip()
        transport, sep, nexthop = result.partition(":")
        if not sep:
            transport, nexthop = "", result
        if "@" in pattern or pattern == "*":
            t.refuse(
                where,
                f"{pattern!r}: the gateway routes by recipient domain only (no addresses, "
                "no '*'; use RELAYHOST for the default route)",
            )
        elif transport not in ("", "smtp", "relay"):
            t.refuse(where, f"transport {transport!r}: the gateway delivers over SMTP only")
        elif not nexthop:
            t.refuse(where, "an entry without a next hop only selects a transport; leave it out")
        else:
            maps[pattern.lower()] = nexthop
    return maps


def dkim(t: Translator) -> None:
    domains = postfix_list(t.env.get("DKIM_DOMAINS", ""))
    if not domains:
        return
    t.set("dkim.domains", domains, "DKIM_DOMAINS")
    t.set("dkim.selector", DKIM_SELECTOR, "DKIM_DOMAINS")
    opendkim = ADDITIONAL_DIR / "opendkim"
    if not t.exists(opendkim):
        t.warn(
            f"DKIM_DOMAINS: the image signed only when {opendkim} existed; the gateway signs for "
            f"{', '.join(domains)} and creates missing keys (selector {DKIM_SELECTOR!r}) under "
            "state_dir/dkim: publish the DNS records it logs, or see `gateway dkim show`"
        )
        return
    overrides: dict[str, dict[str, str]] = {}
    for domain in domains:
        key = opendkim / "keys" / domain / f"{DKIM_SELECTOR}.private"
        if t.exists(key):
            overrides[domain.lower().rstrip(".")] = {"rsa_key": str(t.local(key))}
        else:
            t.warn(f"DKIM_DOMAINS: no key {key}; the gateway creates one for {domain}: publish its record")
    if overrides:
        t.set("dkim.domain", overrides, "DKIM_DOMAINS")
