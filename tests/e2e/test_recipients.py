"""Inbound MX recipients: relay_recipient_maps refuses unknown users at RCPT; virtual_alias_maps rewrites.

A real gateway on loopback relays to a real SMTP sink. The client connects from
127.0.0.3, outside mynetworks, so its mail is inbound mail to relay_domains; the
tables are Postfix text files. Shown: an unknown recipient refused ``550 5.1.1``
and known ones (plain, with a ``+`` extension, by ``@domain``) taken; the three
alias forms of the mailbox image this replaces (a list, an alias, a catch-all),
a recursive alias, delivered to the right mailboxes once each; the address the
client gave kept per recipient (``queue show``, and the DSN's
``Original-Recipient``); tables re-read on SIGHUP.
"""

from __future__ import annotations

import json
import re
import signal
import smtplib

import pytest

from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import relay_config

OUTSIDER = "127.0.0.3"
RECIPIENTS = """\
# relay_recipient_maps: the mailboxes behind this MX
adam@example.com
bob@example.com     OK
@lists.example.com
carol@example.org
"""
ALIASES = """\
support@example.com adam@example.com,bob@example.com   # a list
@example.com        adam@example.com                   # catch-all, lowest precedence
adam@example.com    bob@example.com                    # alias
bob@example.com     bob@example.com                    # with a catch-all, each mailbox names itself (virtual(5))
team@example.org    support@example.com, carol@example.org, friend@elsewhere.test   # recursive, and forwarded
ghost@example.org   nobody@example.org                 # an alias to a mailbox that does not exist
"""


@pytest.fixture
def tables(tmp_path):
    recipients, aliases = tmp_path / "relay_recipients", tmp_path / "virtual"
    recipients.write_text(RECIPIENTS)
    aliases.write_text(ALIASES)
    return recipients, aliases


def config(sink_port: int, recipients, aliases=None, **overrides: str) -> str:
    keys = {
        "relay_domains": '["example.com", "example.org", "lists.example.com"]',
        "relay_recipient_maps": f'["{recipients}"]',
        **overrides,
    }
    if aliases is not None:
        keys["virtual_alias_maps"] = f'["{aliases}"]'
    return relay_config(sink_port, **keys)


def rcpt_replies(gateway, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=15) as client:
        client.ehlo("mx.sender.test")
        assert client.docmd("MAIL", "FROM:<someone@sender.test>")[0] == 250
        return {address: client.docmd("RCPT", f"TO:<{address}>") for address in recipients}


def test_unknown_recipients_are_refused_and_known_ones_taken(gateway_factory, sink, tables):
    recipients, _ = tables
    with gateway_factory(config(sink.port, recipients)) as gateway:
        replies = rcpt_replies(
            gateway,
            [
                "adam@example.com",
                "Bob@Example.com",
                "adam+news@example.com",
                "anyone@lists.example.com",
                "nobody@example.com",
                "carol@example.org",
                "dave@example.org",
            ],
        )
        assert {address for address, (code, _) in replies.items() if code == 250} == {
            "adam@example.com",
            "Bob@Example.com",
            "adam+news@example.com",
            "anyone@lists.example.com",
            "carol@example.org",
        }
        assert replies["nobody@example.com"] == (
            550,
            b"5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in relay recipient table",
        )
        assert replies["dave@example.org"][0] == 550
        gateway.wait_for_log(
            r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.3\]:\d+: 550 5\.1\.1 <nobody@example\.com>: "
            r"Recipient address rejected: User unknown in relay recipient table; "
            r"from=<someone@sender\.test> to=<nobody@example\.com> helo=<mx\.sender\.test> "
            r"rule=relay_recipient_maps"
        )
        # a trusted client (mynetworks) relays without the table, as Postfix checks only relay_domains mail
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=15) as client:
            assert client.sendmail("a@example.org", ["nobody@example.com"], b"Subject: inside\r\n\r\nx\r\n") == {}
        (message,) = sink.wait_for_messages(1)
        assert message.rcpt_tos == ["nobody@example.com"]


def test_aliases_lists_catch_all_and_recursion_reach_the_right_mailboxes_once(gateway_factory, sink, tables):
    recipients, aliases = tables
    with gateway_factory(config(sink.port, recipients, aliases)) as gateway:
        with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=15) as client:
            client.ehlo("mx.sender.test")
            for rcpt in (
                ["support@example.com"],
                ["whoever@example.com"],
                ["adam+news@example.com"],
                ["team@example.org", "bob@example.com"],
            ):
                assert client.sendmail("someone@sender.test", rcpt, f"Subject: {rcpt[0]}\r\n\r\nx\r\n".encode()) == {}
            # an alias that leads to a mailbox that does not exist is an unknown recipient
            assert client.docmd("MAIL", "FROM:<someone@sender.test>")[0] == 250
            assert client.docmd("RCPT", "TO:<ghost@example.org>") == (
                550,
                b"5.1.1 <ghost@example.org>: Recipient address rejected: User unknown in relay recipient table",
            )
        messages = {
            m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode(): m for m in sink.wait_for_messages(4)
        }
    # support: a list of adam and bob; adam is an alias of bob, so bob once
    assert messages["support@example.com"].rcpt_tos == ["bob@example.com"]
    # the catch-all (lowest precedence) leads to adam, and so to bob
    assert messages["whoever@example.com"].rcpt_tos == ["bob@example.com"]
    # the +extension is kept through adam's entry
    assert messages["adam+news@example.com"].rcpt_tos == ["bob+news@example.com"]
    # recursive (team -> support -> adam -> bob), a mailbox, a forward elsewhere; bob given twice: once
    assert messages["team@example.org"].rcpt_tos == ["bob@example.com", "carol@example.org", "friend@elsewhere.test"]


def test_the_original_recipient_is_kept_in_the_queue_and_in_the_dsn(gateway_factory, sink, tables):
    recipients, aliases = tables
    sink.rcpt_replies["bob@example.com"] = ["550 5.1.1 <bob@example.com>: mailbox closed"]
    with gateway_factory(config(sink.port, recipients, aliases)) as gateway:
        with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=15) as client:
            assert (
                client.sendmail("someone@sender.test", ["team@example.org"], b"Subject: to the team\r\n\r\nx\r\n") == {}
            )
        messages = sink.wait_for_messages(2)  # the message (carol, friend) and the DSN about bob
    delivered = next(m for m in messages if m.mail_from == "someone@sender.test")
    assert delivered.rcpt_tos == ["carol@example.org", "friend@elsewhere.test"]
    dsn = next(m for m in messages if m.mail_from == "")
    assert dsn.rcpt_tos == ["someone@sender.test"]
    assert b"Original-Recipient: rfc822; team@example.org\r\nFinal-Recipient: rfc822; bob@example.com" in dsn.data


def test_queue_show_prints_the_original_recipient(gateway_factory, sink, tables):
    recipients, aliases = tables
    sink.rcpt_replies["carol@example.org"] = ["450 4.2.1 try later"] * 5
    extra = {"minimal_backoff_time": '"1h"', "maximal_backoff_time": '"2h"'}
    with gateway_factory(config(sink.port, recipients, aliases, **extra)) as gateway:
        with smtplib.SMTP("127.0.0.1", gateway.port, source_address=(OUTSIDER, 0), timeout=15) as client:
            assert client.sendmail("someone@sender.test", ["team@example.org"], b"Subject: t\r\n\r\nx\r\n") == {}
        line = gateway.wait_for_log(r"to=<carol@example\.org>.*status=deferred")[0]
        queue_id = re.search(r"([0-9A-F]{10,}): to=<carol", line).group(1)
        shown = gateway.cli("queue", "show", queue_id).stdout
    record = json.loads(shown.splitlines()[1])
    by_address = {r["address"]: r for r in record["recipients"]}
    assert by_address["carol@example.org"]["original"] == "team@example.org"
    assert by_address["carol@example.org"]["state"] == "deferred"
    assert by_address["bob@example.com"]["original"] == "team@example.org"


def test_tables_are_read_again_on_sighup(gateway_factory, sink, tables):
    recipients, aliases = tables
    with gateway_factory(config(sink.port, recipients, aliases)) as gateway:
        assert rcpt_replies(gateway, ["erin@example.org"])["erin@example.org"][0] == 550
        recipients.write_text(RECIPIENTS + "erin@example.org\n")
        aliases.write_text(ALIASES + "sales@example.org erin@example.org\n")
        gateway.process.send_signal(signal.SIGHUP)
        workers = GatewayProcess.default_workers  # each worker reloads (and says so) by itself
        gateway.wait_for_log(r"reload done", count=workers)
        replies = rcpt_replies(gateway, ["erin@example.org", "sales@example.org"])
        assert [code for code, _ in replies.values()] == [250, 250]
