"""SMTP AUTH against a real Dovecot auth service (Postfix's smtpd_sasl_type = dovecot), over its socket and TCP.

Dovecot (Debian dovecot-core) runs with a passwd-file passdb; the gateway asks
it with ``service=smtp``, the client's ``rip``, the listener's ``lip`` and
``secured``, which Dovecot's verbose log shows.
"""

from __future__ import annotations

import base64
import smtplib
import socket

import pytest
from passlib.hash import sha512_crypt

from tests.harness.dovecot import DovecotAuthServer
from tests.harness.helpers import client_tls, relay_config
from tests.harness.ports import free_port

OUTSIDER = "127.0.0.3"  # not in mynetworks


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def dovecot():
    lines = [
        f"carol:{{SHA512-CRYPT}}{sha512_crypt.using(rounds=5000).hash('carol-pw')}",
        "closed:{PLAIN}closed-pw::::::nologin=y reason=account closed",
        "moved:{PLAIN}moved-pw::::::proxy=y host=192.0.2.9",
    ]
    with DovecotAuthServer(lines) as server:
        yield server


def start_gateway(gateway_factory, sink, sasl_path: str, extra: str = ""):
    port = free_port()
    config = relay_config(sink.port, f'[auth]\nbackend = "dovecot"\nsmtpd_sasl_path = "{sasl_path}"\n{extra}')
    config += f'[[listener]]\nname = "submission"\naddress = "127.0.0.1:{port}"\ntls = "starttls"\nauth = "required"\n'
    gateway = gateway_factory(config)
    gateway.submission_port = port
    return gateway


def login(gateway, user: str, password: str) -> tuple[int, bytes, smtplib.SMTP]:
    client = smtplib.SMTP("127.0.0.1", gateway.submission_port, source_address=(OUTSIDER, 0), timeout=30)
    client.ehlo("client.test")
    client.starttls(context=client_tls(gateway.ca_file))
    client.ehlo("client.test")
    code, text = client.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{password}"))
    return code, text, client


@pytest.mark.parametrize("transport", ["socket", "inet"])
def test_dovecot_says_who_may_log_in(gateway_factory, sink, dovecot, transport):
    sasl_path = str(dovecot.socket_path) if transport == "socket" else dovecot.inet
    with start_gateway(gateway_factory, sink, sasl_path) as gateway:
        code, text, client = login(gateway, "carol", "carol-pw")
        with client:
            assert (code, text) == (235, b"2.7.0 Authentication successful")
            assert (
                client.sendmail("carol@example.com", ["friend@elsewhere.org"], b"Subject: dovecot\r\n\r\nx\r\n") == {}
            )
        (message,) = sink.wait_for_messages(1)
        assert b"with ESMTPSA id" in message.data
        for user, password in [("carol", "wrong"), ("nobody", "x"), ("closed", "closed-pw"), ("moved", "moved-pw")]:
            code, text, client = login(gateway, user, password)
            client.close()
            assert (code, text) == (535, b"5.7.8 Error: authentication failed: authentication failure"), user
        gateway.wait_for_log(r"Dovecot answered OK with nologin for 'closed': refused")
        gateway.wait_for_log(r"Dovecot answered OK with proxy for 'moved': refused")
    # Dovecot saw the SMTP client's address and that the session was encrypted
    assert f"passwd-file(carol,{OUTSIDER}" in dovecot.log_text()


def test_a_dovecot_that_is_down_or_mute_gives_454_never_535(gateway_factory, sink, dovecot, tmp_path):
    mute = tmp_path / "mute.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(mute))
    listener.listen(5)  # accepts, never answers
    try:
        for sasl_path, extra in [
            (str(tmp_path / "absent.sock"), ""),
            (f"inet:127.0.0.1:{free_port()}", ""),
            (str(mute), 'timeout = "1s"\n'),
        ]:
            with start_gateway(gateway_factory, sink, sasl_path, extra) as gateway:
                code, text, client = login(gateway, "carol", "carol-pw")
                client.close()
                assert (code, text) == (454, b"4.7.0 Temporary authentication failure"), sasl_path
                gateway.wait_for_log(r"error: auth: Dovecot auth service .* did not answer")
    finally:
        listener.close()
