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
        replies = transaction(gateway, "FROM:<sender@example.org> ret=HDRS EnvId=Batch+2B42-x", [
            "TO:<never@elsewhere.test> NOTIFY=NEVER",
            "TO:<success-only@elsewhere.test> notify=SUCCESS,delay",
            "TO:<failure@elsewhere.test> NOTIFY=FAILURE ORCPT=rfc822;Original+40Example.org",
            "TO:<plain@elsewhere.test>"])
        assert [code for code, _ in replies] == [250, 250, 250, 250, 250, 250]
        messages = sink.wait_for_messages(2, timeout=20)  # the message (to plain@) and one DSN
        gateway.wait_for_log(r"no DSN for never@elsewhere\.test, success-only@elsewhere\.test \(NOTIFY=NEVER\)")
    (dsn,) = [message for message in messages if message.mail_from == ""]
    assert dsn.rcpt_tos == ["sender@example.org"]
    assert [message.rcpt_tos for message in messages if message.mail_from] == [["plain@elsewhere.test"]]
    status = dsn.data.split(b"message/delivery-status", 1)[1]
    assert b"Original-Envelope-Id: Batch+42-x\r\n" in status
    assert b"Original-Recipient: rfc822; Original@Example.org\r\nFinal-Recipient: rfc822; failure@elsewhere.test" \
        in status
    assert b"never@elsewhere.test" not in dsn.data and b"success-only@elsewhere.test" not in dsn.data


def test_the_parameters_are_stored_as_sent_and_malformed_ones_refused(gateway_factory, sink):
    sink.rcpt_replies["later@elsewhere.test"] = ["450 4.2.0 try later"] * 5
    extra = {"minimal_backoff_time": '"1h"', "maximal_backoff_time": '"2h"'}
    with gateway_factory(relay_config(sink.port, **extra)) as gateway:
        replies = transaction(gateway, "FROM:<sender@example.org> ENVID=Mixed+2BCase RET=FULL SIZE=100",
                              ["TO:<later@elsewhere.test> NOTIFY=DELAY,FAILURE ORCPT=utf-8;later+40elsewhere.test"])
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
