"""A gateway behind a real haproxy (Debian, TCP mode) with the PROXY protocol, v1 and v2.

haproxy connects to the gateway from 127.0.0.1, which is in mynetworks: without
the PROXY header every client would look trusted (the source-NAT open relay).
Shown: the client address from the header (127.0.0.3, or 127.0.0.1 for an inside
client) decides relay access, is logged, and is the one in the ``Received:``
field; it survives STARTTLS; a PROXY header from an address outside
``upstream_proxy_networks``, a connection without one, and one that says nothing
are closed without a greeting; the per-client connection limit counts the real
clients, not the balancer.
"""

from __future__ import annotations

import re
import smtplib
import socket

import pytest

from tests.harness.haproxy import HaproxyServer
from tests.harness.helpers import client_tls, http_get, relay_config
from tests.harness.ports import free_port

OUTSIDER, INSIDER, STRANGER = "127.0.0.3", "127.0.0.1", "127.0.0.4"


@pytest.fixture
def proxied(gateway_factory, sink):
    port = free_port()
    config = relay_config(
        sink.port,
        'upstream_proxy_networks = ["127.0.0.1/32"]\n'
        'smtpd_upstream_proxy_timeout = "1s"\nsmtpd_client_connection_count_limit = 2\n',
    )
    config += (
        f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\ntls = "starttls"\n'
        'upstream_proxy_protocol = "haproxy"\n'
    )
    with gateway_factory(config) as gateway:
        gateway.port = port
        with HaproxyServer(
            {"v1": ([("127.0.0.1", port)], "send-proxy"), "v2": ([("127.0.0.1", port)], "send-proxy-v2")}
        ) as balancer:
            yield gateway, balancer


def send_as_outsider(client: smtplib.SMTP, subject: str) -> None:
    """After EHLO: a recipient outside relay_domains is refused (the outsider is not trusted, though the
    balancer is), one in relay_domains is taken, and the message is queued."""
    client.ehlo("outside.test")
    assert client.docmd("MAIL", "FROM:<a@outside.test>")[0] == 250
    assert client.docmd("RCPT", "TO:<x@elsewhere.test>")[0] == 554
    assert client.docmd("RCPT", "TO:<in@example.net>")[0] == 250
    assert client.docmd("DATA")[0] == 354
    client.send(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
    assert client.getreply()[0] == 250


def received_field(message) -> bytes:
    return message.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_real_client_decides_relay_access_and_is_in_received(proxied, sink, version):
    gateway, balancer = proxied
    with smtplib.SMTP("127.0.0.1", balancer.ports[version], source_address=(OUTSIDER, 0), timeout=30) as client:
        send_as_outsider(client, "via haproxy")
    with smtplib.SMTP("127.0.0.1", balancer.ports[version], source_address=(INSIDER, 0), timeout=30) as client:
        assert client.sendmail("a@inside.test", ["x@elsewhere.test"], b"Subject: inside\r\n\r\nbody\r\n") == {}
    messages = sink.wait_for_messages(2)
    outside = next(m for m in messages if m.rcpt_tos == ["in@example.net"])
    assert re.search(rb"Received: from outside\.test \(unknown \[127\.0\.0\.3\]\)", outside.data), outside.data[:300]
    gateway.wait_for_log(rf"connect from unknown\[{re.escape(OUTSIDER)}\]:\d+ listener=smtp")
    gateway.wait_for_log(r"reject: RCPT from unknown\[127\.0\.0\.3\]:\d+: 554 5\.7\.1 <x@elsewhere\.test>")


def test_the_client_survives_starttls(proxied, sink):
    gateway, balancer = proxied
    with smtplib.SMTP("127.0.0.1", balancer.ports["v2"], source_address=(OUTSIDER, 0), timeout=30) as client:
        client.starttls(context=client_tls(gateway.ca_file))
        send_as_outsider(client, "tls via haproxy")
    (message,) = sink.wait_for_messages(1)
    received = received_field(message)
    assert re.search(rb"Received: from outside\.test \(unknown \[127\.0\.0\.3\]\).*with ESMTPS", received), received


def greeting_or_close(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    try:
        return sock.recv(200)
    except ConnectionResetError:
        return b""


def test_headers_from_elsewhere_missing_or_slow_close_the_connection(proxied):
    gateway, _ = proxied
    # a PROXY header from an address that is not a balancer: it could claim any client
    with socket.create_connection(("127.0.0.1", gateway.port), source_address=(STRANGER, 0)) as sock:
        sock.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 25\r\n")
        assert greeting_or_close(sock) == b""
    gateway.wait_for_log(
        r"PROXY refused from unknown\[127\.0\.0\.4\]:\d+ listener=smtp: not in upstream_proxy_networks"
    )
    # from the balancer's address, but no header: SMTP straight away
    with socket.create_connection(("127.0.0.1", gateway.port), source_address=(INSIDER, 0)) as sock:
        sock.sendall(b"EHLO direct.test\r\n")
        assert greeting_or_close(sock) == b""
    gateway.wait_for_log(r"PROXY header refused from unknown\[127\.0\.0\.1\]:\d+ listener=smtp: PROXY unrecognized")
    # nothing at all: closed after smtpd_upstream_proxy_timeout
    with socket.create_connection(("127.0.0.1", gateway.port), source_address=(INSIDER, 0)) as sock:
        assert greeting_or_close(sock) == b""
    gateway.wait_for_log(r"PROXY header missing from unknown\[127\.0\.0\.1\]:\d+ listener=smtp \(no header within 1s\)")


def test_the_per_client_limit_counts_real_clients_not_the_balancer(proxied):
    _, balancer = proxied
    held = []
    try:
        for source in (OUTSIDER, OUTSIDER, "127.0.0.5", "127.0.0.5", "127.0.0.6"):  # limit 2 per client
            client = smtplib.SMTP("127.0.0.1", balancer.ports["v2"], source_address=(source, 0), timeout=30)
            held.append(client)  # five connections through one balancer address: all greeted
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", balancer.ports["v2"], source_address=(OUTSIDER, 0), timeout=30)
        assert refused.value.smtp_code == 421
    finally:
        for client in held:
            client.close()


@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_implicit_tls_behind_the_balancer(gateway_factory, sink, option):
    port = free_port()
    config = relay_config(
        sink.port, 'upstream_proxy_networks = ["127.0.0.1/32"]\nsmtpd_upstream_proxy_timeout = "1s"\n'
    )
    config += (
        f'[[listener]]\nname = "smtps"\naddress = "127.0.0.1:{port}"\ntls = "implicit"\n'
        'upstream_proxy_protocol = "haproxy"\n'
    )
    with gateway_factory(config) as gateway, HaproxyServer({"tls": ([("127.0.0.1", port)], option)}) as balancer:
        with smtplib.SMTP_SSL(
            "127.0.0.1",
            balancer.ports["tls"],
            source_address=(OUTSIDER, 0),
            timeout=30,
            context=client_tls(gateway.ca_file),
        ) as client:
            send_as_outsider(client, "465 via haproxy")
        (message,) = sink.wait_for_messages(1)
        # straight to the port without a header: closed before any TLS
        with socket.create_connection(("127.0.0.1", port), source_address=(INSIDER, 0)) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")
            assert greeting_or_close(sock) == b""
        gateway.wait_for_log(r"PROXY header refused from unknown\[127\.0\.0\.1\]:\d+ listener=smtps")
    received = received_field(message)
    assert re.search(rb"Received: from outside\.test \(unknown \[127\.0\.0\.3\]\).*with ESMTPS", received), received


def test_a_client_that_leaves_right_after_its_header_is_a_disconnect_not_an_error(proxied):
    """A balancer's probe (or a client that gave up) closes right after the PROXY header: the header and the
    end of the stream arrive together. Logged as the client's connect and disconnect; not as an internal error
    (it once was: ``unexpected error in SMTP session: IncompleteReadError`` and a counted 451 refusal)."""
    gateway, _ = proxied
    for number in range(3):
        with socket.create_connection(("127.0.0.1", gateway.port), source_address=(INSIDER, 0)) as sock:
            sock.sendall(f"PROXY TCP4 {OUTSIDER} 127.0.0.1 4000{number} 25\r\n".encode())
            sock.shutdown(socket.SHUT_WR)
        gateway.wait_for_log(rf"disconnect from unknown\[127\.0\.0\.3\]:4000{number}$")
    _, text = http_get(gateway.metrics_url + "/metrics")
    assert "unexpected error" not in gateway.log_text and 'reason="internal_error"' not in text
