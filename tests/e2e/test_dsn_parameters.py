"""RFC 3461 parameters from real SMTP clients: taken (never 555), kept per recipient, honoured in our DSNs.

A real gateway relays to a real SMTP sink that refuses some recipients with
550, so the gateway sends DSNs back through the same sink. Shown: MAIL's RET and
ENVID and RCPT's NOTIFY and ORCPT are taken in any letter case and stored as
sent (``queue show``); a malformed one gets ``501 5.5.4``; a recipient with
``NOTIFY=NEVER`` or a NOTIFY list without FAILURE gets no DSN; one with FAILURE
gets a DSN that carries ``Original-Envelope-Id`` (the ENVID) and its ORCPT as
``Original-Recipient``.
"""

from __future__ import annotations

import json
import re
import smtplib

from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink

REFUSE = "550 5.1.1 <{address}>: no such user"


def transaction(gateway, mail: str, rcpts: list[str]) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo("client.example")
        replies = [client.docmd("MAIL", mail)]
        replies += [client.docmd("RCPT", rcpt) for rcpt in rcpts]
        if all(code == 250 for code, _ in replies):
            assert client.docmd("DATA")[0] == 354
            client.send(b"From: sender@example.org\r\nSubject: dsn parameters\r\n\r\nbody\r\n.\r\n")
            replies.append(client.getreply())
        return replies


def test_notify_orcpt_and_envid_reach_the_dsn(gateway_factory, sink):
    for name in ("never", "success-only", "failure"):
        sink.rcpt_replies[f"{name}@elsewhere.test"] = [REFUSE.format(address=f"{name}@elsewhere.test")]
    with gateway_factory(relay_config(sink.port)) as gateway:
        replies = transaction(
            gateway,
            "FROM:<sender@example.org> ret=HDRS EnvId=Batch+2B42-x",
            [
                "TO:<never@elsewhere.test> NOTIFY=NEVER",
                "TO:<success-only@elsewhere.test> notify=SUCCESS,delay",
                "TO:<failure@elsewhere.test> NOTIFY=FAILURE ORCPT=rfc822;Original+40Example.org",
                "TO:<plain@elsewhere.test>",
            ],
        )
        assert [code for code, _ in replies] == [250, 250, 250, 250, 250, 250]
        messages = sink.wait_for_messages(2, timeout=20)  # the message (to plain@) and one DSN
        gateway.wait_for_log(r"no DSN for never@elsewhere\.test, success-only@elsewhere\.test \(NOTIFY=NEVER\)")
    (dsn,) = [message for message in messages if message.mail_from == ""]
    assert dsn.rcpt_tos == ["sender@example.org"]
    assert [message.rcpt_tos for message in messages if message.mail_from] == [["plain@elsewhere.test"]]
    status = dsn.data.split(b"message/delivery-status", 1)[1]
    assert b"Original-Envelope-Id: Batch+42-x\r\n" in status
    assert (
        b"Original-Recipient: rfc822; Original@Example.org\r\nFinal-Recipient: rfc822; failure@elsewhere.test" in status
    )
    assert b"never@elsewhere.test" not in dsn.data and b"success-only@elsewhere.test" not in dsn.data


def test_the_parameters_are_stored_as_sent_and_malformed_ones_refused(gateway_factory, sink):
    sink.rcpt_replies["later@elsewhere.test"] = ["450 4.2.0 try later"] * 5
    extra = {"minimal_backoff_time": '"1h"', "maximal_backoff_time": '"2h"'}
    with gateway_factory(relay_config(sink.port, **extra)) as gateway:
        replies = transaction(
            gateway,
            "FROM:<sender@example.org> ENVID=Mixed+2BCase RET=FULL SIZE=100",
            ["TO:<later@elsewhere.test> NOTIFY=DELAY,FAILURE ORCPT=utf-8;later+40elsewhere.test"],
        )
        assert [code for code, _ in replies] == [250, 250, 250]
        queue_id = re.search(rb"queued as (\w+)", replies[-1][1]).group(1).decode()
        gateway.wait_for_log(rf"{queue_id}: deferred")
        record = json.loads(gateway.cli("queue", "show", queue_id).stdout.splitlines()[1])
        assert record["dsn_envid"] == "Mixed+Case" and record["dsn_ret"] == "FULL"
        (recipient,) = record["recipients"]
        assert recipient["notify"] == ["DELAY", "FAILURE"] and recipient["orcpt"] == "utf-8;later@elsewhere.test"
        refused = transaction(gateway, "FROM:<sender@example.org> RET=MAYBE", [])
        assert refused[0] == (501, b"5.5.4 Error: invalid parameter RET=MAYBE")
        refused = transaction(gateway, "FROM:<sender@example.org>", ["TO:<x@elsewhere.test> NOTIFY=NEVER,FAILURE"])
        assert refused[1] == (501, b"5.5.4 Error: invalid parameter NOTIFY=NEVER,FAILURE")


def test_ehlo_offers_dsn_and_a_next_hop_that_does_gets_the_parameters(gateway_factory):
    with SmtpSink(dsn=True) as next_hop, gateway_factory(relay_config(next_hop.port)) as gateway:
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
            client.ehlo("client.example")
            assert client.has_extn("dsn")
        replies = transaction(
            gateway,
            "FROM:<sender@example.org> RET=HDRS ENVID=id+2Bone",
            [
                "TO:<a@elsewhere.test> NOTIFY=SUCCESS,DELAY,FAILURE ORCPT=rfc822;first+40example.org",
                "TO:<b@elsewhere.test>",
                "TO:<c@elsewhere.test> NOTIFY=NEVER",
            ],
        )
        assert [code for code, _ in replies] == [250, 250, 250, 250, 250]
        (message,) = next_hop.wait_for_messages(1)
        assert "RET=HDRS" in message.mail_options and "ENVID=id+2Bone" in message.mail_options
        # xtext again on the way out ("@" needs no encoding, "+" does)
        assert message.rcpt_params == {
            "a@elsewhere.test": ["NOTIFY=SUCCESS,DELAY,FAILURE", "ORCPT=rfc822;first@example.org"],
            "b@elsewhere.test": [],
            "c@elsewhere.test": ["NOTIFY=NEVER"],
        }
        gateway.wait_for_log(r"removed")
        assert len(next_hop.messages) == 1  # the next hop does DSN: the success notice is its own


def test_a_next_hop_without_dsn_makes_the_success_notice_ours(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port)) as gateway:
        transaction(
            gateway,
            "FROM:<sender@example.org> ENVID=E1",
            ["TO:<wants@elsewhere.test> NOTIFY=SUCCESS", "TO:<quiet@elsewhere.test>"],
        )
        messages = sink.wait_for_messages(2, timeout=20)
    (notice,) = [message for message in messages if message.mail_from == ""]
    assert notice.rcpt_tos == ["sender@example.org"] and b"Subject: Successful Mail Delivery Report" in notice.data
    status = notice.data.split(b"message/delivery-status", 1)[1]
    assert b"Original-Envelope-Id: E1\r\n" in status
    assert b"Final-Recipient: rfc822; wants@elsewhere.test\r\nAction: relayed\r\nStatus: 2.0.0" in status
    assert b"quiet@elsewhere.test" not in notice.data


def test_one_delay_warning_after_delay_warning_time(gateway_factory, sink):
    for address in ("slow@elsewhere.test", "failure-only@elsewhere.test"):
        sink.rcpt_replies[address] = ["450 4.2.0 mailbox busy"] * 50
    extra = {
        "delay_warning_time": '"1s"',
        "minimal_backoff_time": '"1s"',
        "maximal_backoff_time": '"1s"',
        "queue_run_delay": '"1s"',
    }
    with gateway_factory(relay_config(sink.port, **extra)) as gateway:
        transaction(
            gateway,
            "FROM:<sender@example.org>",
            ["TO:<slow@elsewhere.test>", "TO:<failure-only@elsewhere.test> NOTIFY=FAILURE"],
        )
        (warning,) = sink.wait_for_messages(1, timeout=20)
        gateway.wait_for_log(r"delay warning: ")
        assert sink.attempts["slow@elsewhere.test"] >= 2
        attempts = sink.attempts["slow@elsewhere.test"]
        gateway.wait_for_log(rf"to=<slow@elsewhere\.test>.*attempts={attempts + 2},", timeout=20)
        assert len(sink.messages) == 1  # one warning per message, however long it waits
    assert warning.mail_from == "" and b"Subject: Delayed Mail (still being retried)" in warning.data
    status = warning.data.split(b"message/delivery-status", 1)[1]
    assert b"Final-Recipient: rfc822; slow@elsewhere.test\r\nAction: delayed\r\nStatus: 4.2.0" in status
    assert b"failure-only@elsewhere.test" not in warning.data  # its NOTIFY has no DELAY
