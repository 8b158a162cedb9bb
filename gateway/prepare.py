"""What the gateway builds from a Config before it serves: TLS contexts and pipelines.

One path for ``gateway run`` (at start), SIGHUP (a reload) and ``gateway
check-config``, so that a config ``check-config`` passes is one ``run`` accepts
(the systemd unit's ``ExecStartPre`` relies on it). Every file a key names is
opened here: ``smtpd_tls_cert_file``, ``smtpd_tls_key_file``,
``smtpd_tls_CAfile``, ``smtp_tls_CAfile``, ``smtp_tls_cert_file``,
``smtp_tls_key_file``, ``[header_checks] file``, ``[dkim.domain.*]`` key files.

What ``check-config`` (``write_files=False``) does not do: write under
``state_dir``. Missing DKIM keys are not generated, and without
``smtpd_tls_cert_file`` the local CA is only read (when it exists) and the
server context is built with a throw-away certificate in a temporary folder, so
``smtpd_tls_CAfile`` still goes through :func:`gateway.tls.context.server_context`.
What it cannot check: that addresses can be bound and the spool locked (the
running gateway holds them).
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Config, load
from gateway.errors import ConfigError
from gateway.pipeline.build import Pipelines, build_pipelines
from gateway.tls import SERVER_CERT_NAME
from gateway.tls.context import client_context, server_context

if TYPE_CHECKING:
    from gateway.tls.local_ca import LocalCertificates

log = logging.getLogger("gateway")


@dataclass(slots=True)
class Prepared:
    """The validated, built parts of one configuration.

    Attributes:
        server_tls: the listeners' context, None when no listener uses TLS.
        server_cert: the PEM server certificate in use (health check, expiry
            metric); None without TLS listeners or with ``write_files=False`` and
            no configured certificate.
        local_ca: the generated local CA and certificate, when no
            ``smtpd_tls_cert_file`` is set (only with ``write_files=True``).
        client_tls: the relay client's context (None at ``smtp_tls_security_level = "none"``).
        pipelines: access and content pipelines with the DKIM signer; the caller
            closes them (``await pipelines.aclose()``).
    """

    server_tls: ssl.SSLContext | None
    server_cert: Path | None
    local_ca: LocalCertificates | None
    client_tls: ssl.SSLContext | None
    pipelines: Pipelines


def prepare(config: Config, *, write_files: bool = True) -> Prepared:
    """Build the server and client TLS contexts and the pipelines from ``config``.

    Blocking (file reads, key generation): at start and reload this runs before
    or between sessions' work, as the old code did; it takes milliseconds
    unless a DKIM key or the local CA is generated.

    Args:
        config: the validated configuration.
        write_files: True for ``run`` and reload (generate the local CA and
            server certificate, and missing DKIM keys); False for ``check-config``.

    Raises:
        ConfigError: naming the key whose file is missing, unreadable, not PEM,
            mismatched or refused, or a policy's bad setting.
    """
    server_tls, server_cert, local = _server_tls(config, write_files)
    client_tls = client_context(
        config.smtp_tls_security_level, config.smtp_tls_CAfile, config.smtp_tls_cert_file, config.smtp_tls_key_file
    )
    pipelines = build_pipelines(config, prepare_keys=write_files)
    return Prepared(
        server_tls=server_tls, server_cert=server_cert, local_ca=local, client_tls=client_tls, pipelines=pipelines
    )


def server_certificate_file(config: Config) -> Path | None:
    """The server certificate the listeners present: ``smtpd_tls_cert_file``, else the local CA's
    ``state_dir/tls/server.crt``; None when no listener uses TLS. (``gateway health`` reads it without
    building a context.)"""
    if not any(listener.tls != "none" for listener in config.listeners):
        return None
    return config.smtpd_tls_cert_file or config.tls_dir / SERVER_CERT_NAME


def _server_tls(
    config: Config, write_files: bool
) -> tuple[ssl.SSLContext | None, Path | None, LocalCertificates | None]:
    if server_certificate_file(config) is None:
        return None, None, None
    # imported late: cryptography (9 MB) is loaded only by a gateway with TLS listeners
    from gateway.tls.local_ca import check_local_ca, ensure_local_certificates

    if config.smtpd_tls_cert_file and config.smtpd_tls_key_file:
        context = server_context(config.smtpd_tls_cert_file, config.smtpd_tls_key_file, config.smtpd_tls_CAfile)
        return context, config.smtpd_tls_cert_file, None
    if write_files:
        local = ensure_local_certificates(config.tls_dir, config.myhostname)
        return server_context(local.server_cert, local.server_key, config.smtpd_tls_CAfile), local.server_cert, local
    check_local_ca(config.tls_dir, config.myhostname)
    with tempfile.TemporaryDirectory(prefix="gateway-check-") as folder:
        throwaway = ensure_local_certificates(Path(folder), config.myhostname)
        context = server_context(throwaway.server_cert, throwaway.server_key, config.smtpd_tls_CAfile)
    return context, None, None


def announce(prepared: Prepared) -> None:
    """Log what an operator must publish or pin: the local CA certificate and each DKIM key's DNS record.

    At every start and reload, as the ServerContainers image did, new keys or not;
    the CA one line per PEM line (lines stay lines in any log collector).
    """
    if prepared.local_ca is not None:
        local = prepared.local_ca
        log.info(
            "using the local CA %s%s; clients can pin it:",
            local.ca_cert,
            " (server certificate renewed)" if local.renewed else "",
        )
        for line in local.ca_cert.read_text().strip().splitlines():
            log.info("%s", line)
    if prepared.pipelines.signer is not None:
        for record in prepared.pipelines.signer.records():
            log.info(
                "dkim: d=%s s=%s a=%s: DNS record %s",
                record.domain,
                record.selector,
                record.algorithm,
                record.zone_line,
            )


def prepare_reload(
    config_path: Path | None, adapt: Callable[[Config], Config] | None = None
) -> tuple[Config, Prepared] | None:
    """Read and prepare the config file again, for SIGHUP; None (and a log line) when it is refused.

    ``adapt`` turns the loaded config into the one to prepare (a worker's share of the limits).
    An invalid config, or any error while building it, leaves the running one in place.
    """
    log.info("reload requested (SIGHUP)")
    try:
        config = load(config_path)
        if adapt is not None:
            config = adapt(config)
        return config, prepare(config)
    except ConfigError as error:
        log.error("reload refused, keeping the running configuration: %s", error)
    except Exception:
        log.exception("reload failed, keeping the running configuration")
    return None
