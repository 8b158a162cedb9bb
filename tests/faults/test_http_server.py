"""The metrics/health listener holds against clients that try to use it up (real sockets, curl).

Issue 18: with a lowered open-file limit about 130 idle connections made the
SMTP port and /healthz stop answering; the HTTP server had no connection cap
and no time limit for request headers.
"""

from __future__ import annotations

import socket
import subprocess
import time
from urllib.parse import urlparse

from gateway.ops.http_server import HEAD_TIMEOUT, MAX_CONNECTIONS
from tests.harness.helpers import closed_within, http_get

METRICS_TIMEOUT = 2.0  # seconds; the config key under test (the default is HEAD_TIMEOUT)


def _address(gateway) -> tuple[str, int]:
    url = urlparse(gateway.metrics_url)
    return url.hostname, url.port


def test_connections_over_the_cap_are_closed_and_slow_heads_are_cut(gateway_factory):
    assert METRICS_TIMEOUT < HEAD_TIMEOUT  # so the cut below is the configured one, not the default
    gateway = gateway_factory(f'metrics_timeout = "{METRICS_TIMEOUT:g}s"\n')
    with gateway:
        address = _address(gateway)
        slow = [socket.create_connection(address, timeout=5) for _ in range(MAX_CONNECTIONS)]
        try:
            for sock in slow:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and the head never ends
            time.sleep(0.3)
            extra = socket.create_connection(address, timeout=5)
            assert closed_within(extra, 2.0)  # over the cap: closed at once
            extra.close()
            started = time.monotonic()
            assert all(closed_within(sock, METRICS_TIMEOUT + 5) for sock in slow)  # cut at metrics_timeout
            assert time.monotonic() - started < HEAD_TIMEOUT
        finally:
            for sock in slow:
                sock.close()
        assert http_get(gateway.metrics_url + "/healthz")[0] == 200  # served again


def test_bad_requests_get_clear_answers_and_keep_alive_works_with_curl(gateway_factory):
    gateway = gateway_factory("")
    with gateway:
        host, port = _address(gateway)
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 413 ")
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"DELETE /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert sock.recv(200).startswith(b"HTTP/1.1 405 ")
        assert http_get(gateway.metrics_url + "/nothing")[0] == 404
        # curl: two requests over one connection, as Prometheus scrapes
        done = subprocess.run(
            ["curl", "-sS", "-v", f"http://{host}:{port}/healthz", f"http://{host}:{port}/metrics"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert "Re-using existing connection" in done.stderr or "Reusing existing connection" in done.stderr
        assert "gateway_smtp_data_memory_bytes" in done.stdout
