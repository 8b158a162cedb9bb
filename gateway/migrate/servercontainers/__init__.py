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

from gateway.migrate.servercontainers.cli import main
from gateway.migrate.servercontainers.image import (
    IMAGE_NAMESPACES,
    IMAGE_VARIABLES,
    SCANNER_VARIABLES,
    Refusal,
    Refused,
)
from gateway.migrate.servercontainers.toml_writer import to_toml
from gateway.migrate.servercontainers.translator import Translator, translate

__all__ = [
    "IMAGE_NAMESPACES",
    "IMAGE_VARIABLES",
    "SCANNER_VARIABLES",
    "Refusal",
    "Refused",
    "Translator",
    "main",
    "to_toml",
    "translate",
]
