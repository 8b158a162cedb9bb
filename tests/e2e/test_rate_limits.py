"""Client rate limits (Postfix anvil): connections, messages and recipients per client per time unit.

A real gateway on loopback with small limits; the limited client connects from
127.0.0.3 (outside mynetworks), the exempt one from 127.0.0.1 (mynetworks, the
default exception). Each limit is hit and answered as Postfix does, the refusal
is logged with its reason and counted in the metrics, and the other client is
not affected. The window is a minute, so nothing here waits for it to pass.
"""

from __future__ import annotations

import re
import smtplib

from tests.harness.helpers import http_get, relay_config

LIMITED, EXEMPT = "127.0.0.3", "127.0.0.1"
# One worker: the counts are per process (README "Rate limits"), so exact numbers need one.
LIMITS = (
    "smtpd_client_connection_rate_limit = 3\nsmtpd_client_message_rate_limit = 2\n"
    'smtpd_client_recipient_rate_limit = 4\nanvil_rate_time_unit = "60s"\nworkers = 1\n'
)


def connect(gateway, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.port, source_address=(source, 0), timeout=15)
    client.ehlo("client.test")
    return client


def rejected(gateway, reason: str) -> float:
    status, text = http_get(gateway.metrics_url + "/metrics")
    assert status == 200
    found = re.findall(rf'^gateway_messages_rejected_total\{{[^}}]*reason="{reason}"[^}}]*\}} (\S+)$', text, re.M)
    return sum(float(value) for value in found)


def test_the_connection_rate_limit_closes_with_421_and_spares_mynetworks(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port, LIMITS, relay_domains='["example.net"]')) as gateway:
        for _ in range(3):
            connect(gateway, LIMITED).quit()
        try:
            fourth = smtplib.SMTP("127.0.0.1", gateway.port, source_address=(LIMITED, 0), timeout=15)
        except smtplib.SMTPConnectError as error:  # smtplib raises on a non-220 greeting
            assert (error.smtp_code, error.smtp_error) == (421, b"4.7.0 Error: too many connections from 127.0.0.3")
        else:
            fourth.close()
            raise AssertionError("the fourth connection within the minute was greeted")
        for _ in range(5):  # mynetworks: never limited
            connect(gateway, EXEMPT).quit()
        gateway.wait_for_log(
            r"NOQUEUE: reject: CONNECT from unknown\[127\.0\.0\.3\]:\d+: 421 4\.7\.0 Error: too many "
            r"connections from 127\.0\.0\.3"
        )
        assert rejected(gateway, "connection_rate_limit") == 1


def test_message_and_recipient_rate_limits_answer_450(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port, LIMITS, relay_domains='["example.net"]')) as gateway:
        with connect(gateway, LIMITED) as client:
            assert client.docmd("MAIL", "FROM:<a@example.org>")[0] == 250
            replies = [client.docmd("RCPT", f"TO:<r{number}@example.net>") for number in range(5)]
            assert [code for code, _ in replies] == [250, 250, 250, 250, 450]
            assert replies[4][1] == b"4.7.1 Error: too many recipients from 127.0.0.3"
            assert client.docmd("DATA")[0] == 354
            client.send(b"Subject: limited\r\n\r\nbody\r\n.\r\n")
            assert client.getreply()[0] == 250
            assert client.docmd("MAIL", "FROM:<a@example.org>")[0] == 250  # the second message of the minute
            assert client.docmd("RSET")[0] == 250
            assert client.docmd("MAIL", "FROM:<a@example.org>") == (450, b"4.7.1 Error: too much mail from 127.0.0.3")
        with connect(gateway, EXEMPT) as client:  # mynetworks: as many as it likes
            for number in range(4):
                assert (
                    client.sendmail(
                        "a@example.org",
                        [f"x{n}@elsewhere.test" for n in range(5)],
                        f"Subject: exempt {number}\r\n\r\nbody\r\n".encode(),
                    )
                    == {}
                )
        assert len(sink.wait_for_messages(5)) == 5
        gateway.wait_for_log(
            r"NOQUEUE: reject: MAIL from unknown\[127\.0\.0\.3\]:\d+: 450 4\.7\.1 Error: too much mail "
            r"from 127\.0\.0\.3; from=<a@example\.org>"
        )
        assert rejected(gateway, "message_rate_limit") == 1 and rejected(gateway, "recipient_rate_limit") == 1


def test_listed_exceptions_replace_mynetworks(gateway_factory, sink):
    limits = LIMITS + 'smtpd_client_event_limit_exceptions = ["127.0.0.3/32"]\n'
    with gateway_factory(relay_config(sink.port, limits, relay_domains='["example.net"]')) as gateway:
        for _ in range(5):
            connect(gateway, LIMITED).quit()  # listed: never limited
        for _ in range(3):
            connect(gateway, EXEMPT).quit()
        try:
            smtplib.SMTP("127.0.0.1", gateway.port, source_address=(EXEMPT, 0), timeout=15).close()
        except smtplib.SMTPConnectError as error:  # mynetworks is no longer an exception
            assert error.smtp_code == 421
        else:
            raise AssertionError("mynetworks was still exempt although the exceptions did not name it")
