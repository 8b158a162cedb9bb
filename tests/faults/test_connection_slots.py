"""Connection slots and file handles: counted at accept time, bounded handshakes, a raised open-file limit.

Issue 18: on an implicit-TLS listener the per-client limit was counted only
after the TLS handshake, so one address could hold any number of
pre-handshake connections (20 of 20 with a limit of 5), and with a lowered
open-file limit about 130 of them made the SMTP port and /healthz stop answering.
"""

from __future__ import annotations

import re
import smtplib
import socket
import time
from pathlib import Path

from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import client_tls, closed_within, http_get, relay_config
from tests.harness.ports import free_port

HOLDER = "127.0.0.3"


def _closed_now(sock: socket.socket) -> bool:
    """True when the server has closed ``sock`` without sending a byte (checked without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(100) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def test_pre_handshake_connections_beyond_the_limit_are_closed_and_handshakes_time_out(gateway_factory, sink):
    port = free_port()
    gateway = gateway_factory(
        relay_config(sink.port, 'smtpd_client_connection_count_limit = 3\nsmtpd_starttls_timeout = "2s"\n')
        + f'[[listener]]\nname = "smtps"\naddress = "127.0.0.1:{port}"\ntls = "implicit"\n'
    )
    with gateway:
        held = [socket.create_connection(("127.0.0.1", port), source_address=(HOLDER, 0)) for _ in range(5)]
        try:
            # the two over the limit are closed at once, without a byte; the three others wait for a handshake.
            # Which two: the last two counted, in connect order for one process; with workers = N
            # the workers count in the order they accept, so any two of the five.
            time.sleep(1.0)  # less than smtpd_starttls_timeout
            closed = [_closed_now(sock) for sock in held]
            assert sorted(closed) == [False, False, False, True, True], closed
            if GatewayProcess.default_workers == 1:
                assert closed == [False, False, False, True, True]
            held = [sock for sock, gone in zip(held, closed) if not gone] + [s for s, g in zip(held, closed) if g]
            gateway.wait_for_log(r"connection limit reached, refusing 127\.0\.0\.3", count=2)
            # another client is served meanwhile
            with smtplib.SMTP_SSL(
                "127.0.0.1", port, source_address=("127.0.0.4", 0), timeout=10, context=client_tls(gateway.ca_file)
            ) as client:
                assert client.ehlo()[0] == 250
            # a handshake never started is given up after smtpd_starttls_timeout, and the slot is free again
            assert all(closed_within(sock, 5.0) for sock in held[:3])
            gateway.wait_for_log(
                r"TLS handshake failed from unknown\[127\.0\.0\.3\]:\d+ listener=smtps "
                r"no client certificate: .*2\.0 seconds",
                count=3,
            )
        finally:
            for sock in held:
                sock.close()
        with smtplib.SMTP_SSL(
            "127.0.0.1", port, source_address=(HOLDER, 0), timeout=10, context=client_tls(gateway.ca_file)
        ) as client:
            assert client.ehlo()[0] == 250


def test_the_soft_open_file_limit_is_raised_at_start(tmp_path):
    gateway = GatewayProcess(
        tmp_path / "gw",
        f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{free_port()}"\ntls = "none"\n',
        wrapper=["prlimit", "--nofile=256:4096"],
    )
    with gateway:
        gateway.wait_for_log(r"open files: soft limit raised from 256 to 4096")
        limits = Path(f"/proc/{gateway.process.pid}/limits").read_text()
        assert re.search(r"^Max open files\s+4096\s+4096\s+files", limits, re.M), limits
        assert http_get(gateway.metrics_url + "/healthz")[0] == 200
