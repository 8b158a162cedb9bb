"""SMTP AUTH against a real OpenLDAP (slapd, Debian) with a test tree: search, bind as the user, group check.

As the exim smarthost this gateway replaces: only users in ``cn=mail-senders``
may relay. Shown here with the real server: a member logs in and relays, a
user outside the group, a wrong password, an empty password and a login that
tries filter injection are refused ``535``, and an LDAP server that is down or
does not answer gives ``454`` (never ``535``).
"""

from __future__ import annotations

import base64
import smtplib
import socket

import pytest

from tests.harness.helpers import client_tls, relay_config
from tests.harness.ports import free_port
from tests.harness.slapd import SENDERS_GROUP, SlapdServer

OUTSIDER = "127.0.0.3"  # not in mynetworks
USERS = {"ann": ("ann@example.org", "ann-pw", True), "ben": ("ben@example.org", "ben-pw", False)}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def slapd():
    with SlapdServer(USERS) as server:
        yield server


def start_gateway(gateway_factory, sink, url: str, extra: str = ""):
    port = free_port()
    config = relay_config(
        sink.port,
        f'[auth]\nbackend = "ldap"\nldap_url = "{url}"\n'
        f'ldap_search_base = "ou=people,dc=example,dc=org"\nldap_filter = "(mail=%s)"\n'
        f'ldap_group_filter = "(memberOf={SENDERS_GROUP})"\n{extra}',
    )
    config += f'[[listener]]\nname = "submission"\naddress = "127.0.0.1:{port}"\ntls = "starttls"\nauth = "required"\n'
    gateway = gateway_factory(config)
    gateway.submission_port = port
    return gateway


def login(gateway, user: str, password: str) -> tuple[tuple[int, bytes], smtplib.SMTP]:
    client = smtplib.SMTP("127.0.0.1", gateway.submission_port, source_address=(OUTSIDER, 0), timeout=30)
    client.ehlo("client.test")
    client.starttls(context=client_tls(gateway.ca_file))
    client.ehlo("client.test")
    return client.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{password}")), client


def test_only_members_of_the_sender_group_log_in_and_relay(gateway_factory, sink, slapd):
    with start_gateway(gateway_factory, sink, slapd.url) as gateway:
        reply, client = login(gateway, "ann@example.org", "ann-pw")
        with client:
            assert reply == (235, b"2.7.0 Authentication successful")
            assert client.sendmail("ann@example.org", ["friend@elsewhere.org"], b"Subject: ldap\r\n\r\nx\r\n") == {}
        (message,) = sink.wait_for_messages(1)
        assert b"with ESMTPSA id" in message.data
        refused = [
            ("ben@example.org", "ben-pw"),  # right password, not in the group
            ("ann@example.org", "wrong"),
            ("ann@example.org", ""),
            ("*", "ann-pw"),
            ("ann@example.org)(mail=*", "ann-pw"),
            ("nobody@example.org", "x"),
        ]
        for _number, (user, password) in enumerate(refused):
            reply, client = login(gateway, user, password)
            client.close()
            assert reply == (535, b"5.7.8 Error: authentication failed: authentication failure"), (user, password)
        gateway.wait_for_log(r"does not match ldap_group_filter .*: refused")


def test_an_ldap_server_that_is_down_or_mute_gives_454(gateway_factory, sink, tmp_path):
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(5)  # accepts, never answers
    try:
        for url, extra in [
            (f"ldap://127.0.0.1:{free_port()}", 'timeout = "2s"\n'),
            (f"ldap://127.0.0.1:{mute.getsockname()[1]}", 'timeout = "1s"\n'),
        ]:
            with start_gateway(gateway_factory, sink, url, extra) as gateway:
                reply, client = login(gateway, "ann@example.org", "ann-pw")
                client.close()
                assert reply == (454, b"4.7.0 Temporary authentication failure"), url
                gateway.wait_for_log(r"error: auth: LDAP .* (did not answer|refused the search bind)")
    finally:
        mute.close()
