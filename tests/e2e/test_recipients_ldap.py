"""Recipient validation against a real OpenLDAP (slapd, Debian): the directory says who exists.

The fixture starts slapd with two users; the gateway's ``[relay_recipient_ldap]``
searches it for each RCPT of an untrusted client to relay_domains. Shown: a
user in the directory is taken, one that is not is refused ``550 5.1.1``, an
address that tries filter injection (``a*@example.org`` would match ann's entry
unescaped) finds nothing, a text table and the
directory combine (either may know the address), and a directory that is down
or does not answer gives ``451 4.3.0``, never 550.
"""

from __future__ import annotations

import smtplib
import socket

import pytest

from tests.harness.helpers import relay_config
from tests.harness.ports import free_port
from tests.harness.slapd import SlapdServer

OUTSIDER = "127.0.0.3"


@pytest.fixture(scope="module")
def slapd():
    with SlapdServer(
        {"ann": ("ann@example.org", "ann-pw", True), "ben": ("ben@example.org", "ben-pw", False)}
    ) as server:
        yield server


def config(sink_port: int, url: str, extra: str = "", **keys: str) -> str:
    return relay_config(
        sink_port,
        f'[relay_recipient_ldap]\nldap_url = "{url}"\n'
        'ldap_search_base = "ou=people,dc=example,dc=org"\nldap_filter = "(mail=%s)"\n' + extra,
        relay_domains='["example.org"]',
        **keys,
    )


def rcpt_codes(gateway, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=30) as client:
        client.ehlo("mx.sender.test")
        assert client.docmd("MAIL", "FROM:<someone@sender.test>")[0] == 250
        return {address: client.docmd("RCPT", f"TO:<{address}>") for address in recipients}


def test_the_directory_says_who_exists(gateway_factory, sink, slapd, tmp_path):
    table = tmp_path / "relay_recipients"
    table.write_text("carol@example.org\n")
    with gateway_factory(config(sink.port, slapd.url, relay_recipient_maps=f'["{table}"]')) as gateway:
        replies = rcpt_codes(
            gateway,
            [
                "ann@example.org",
                "ben@example.org",
                "carol@example.org",
                "nobody@example.org",
                "*@example.org",
                "a*@example.org",
            ],
        )
        assert {address: code for address, (code, _) in replies.items()} == {
            "ann@example.org": 250,
            "ben@example.org": 250,
            "carol@example.org": 250,  # directory, directory, table
            "nobody@example.org": 550,
            "*@example.org": 550,
            "a*@example.org": 550,
        }
        assert replies["nobody@example.org"][1] == (
            b"5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in relay recipient table"
        )
        with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=30) as client:
            assert client.sendmail("someone@sender.test", ["ann@example.org"], b"Subject: ldap\r\n\r\nx\r\n") == {}
        (message,) = sink.wait_for_messages(1)
        assert message.rcpt_tos == ["ann@example.org"]


def test_a_directory_that_is_down_or_mute_gives_451_never_550(gateway_factory, sink):
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(5)  # accepts, never answers
    try:
        for url in (f"ldap://127.0.0.1:{free_port()}", f"ldap://127.0.0.1:{mute.getsockname()[1]}"):
            with gateway_factory(config(sink.port, url, 'timeout = "1s"\n')) as gateway:
                replies = rcpt_codes(gateway, ["ann@example.org"])
                assert replies["ann@example.org"] == (
                    451,
                    b"4.3.0 <ann@example.org>: Recipient address rejected: Temporary lookup failure",
                ), url
                gateway.wait_for_log(r"recipients: LDAP .* did not answer")
                gateway.wait_for_log(
                    r"451 4\.3\.0 <ann@example\.org>: .*rule=relay_recipient_maps "
                    r"detail=relay_recipient_ldap ldap://127\.0\.0\.1:\d+ did not answer"
                )
    finally:
        mute.close()
