"""Attacker bytes never reach the operator's terminal: ``gateway queue list`` and ``queue show``.

Issue 18: ``queue show`` printed header bytes raw (an OSC title sequence, a
screen clear and an OSC 52 clipboard write reached the terminal), ``queue list``
printed a next hop's escape codes and C1 bytes, and one raw 0x9B byte in a
recipient crashed ``queue list`` under a strict UTF-8 stdout.
"""

from __future__ import annotations

import re

from tests.harness.helpers import raw_session, relay_config

# C0 controls but tab and newline, DEL, C1 controls (as UTF-8), LS/PS: none may be printed as they are.
_RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
HOSTILE_HEADERS = (
    b"Subject: \x1b]0;owned\x07title \x1b[2J\x1b[H cleared\r\n"
    b"X-Clip: \x1b]52;c;ZWNobyBvd25lZA==\x07\r\n"
    b"X-C1: \xc2\x9b31mred \xe2\x80\xa8 \x9b\r\n"
)


def test_queue_list_and_show_print_no_raw_control_byte(gateway_factory, sink):
    sink.rcpt_replies["escape@elsewhere.org"] = ["451 4.3.0 \x1b[2J\x1b]0;x\x07 \x9b1;31m busy"] * 10
    gateway = gateway_factory(relay_config(sink.port, minimal_backoff_time='"1h"', maximal_backoff_time='"2h"'))
    with gateway:
        replies = raw_session(
            gateway.port,
            [
                b"EHLO client.test",
                b"MAIL FROM:<a@example.com>",
                b"RCPT TO:<escape@elsewhere.org>",
                b"RCPT TO:<raw\x9bbyte@elsewhere.org>",
                b"RCPT TO:<c1\xc2\x9bcsi@elsewhere.org>",
                b"DATA",
                HOSTILE_HEADERS + b"\r\nbody\r\n.",
                b"QUIT",
            ],
        )
        # not UTF-8, or a C1 control: never deliverable, so refused (it also took the good recipient down)
        assert replies[4].startswith(b"501 5.1.3 ") and replies[5].startswith(b"501 5.1.3 "), replies
        assert replies[-2].startswith(b"250 2.0.0 Ok: queued as "), replies
        queue_id = replies[-2].split()[-1].decode()
        gateway.wait_for_log(rf"{queue_id}: to=<escape@elsewhere\.org>, .*status=deferred")
        # a strict UTF-8 stdout: the 0x9B byte of the recipient must not crash the listing
        strict = {"PYTHONIOENCODING": "utf-8:strict"}
        gateway.env.update(strict)
        listing = gateway.cli("queue", "list")
        shown = gateway.cli("queue", "show", queue_id)
    for done in (listing, shown):
        assert done.returncode == 0, done.stderr
        raw = done.stdout.encode("utf-8", "surrogateescape")
        assert not _RAW_CONTROL.search(raw), _RAW_CONTROL.search(raw)
    assert "^[[2J^[]0;x^G M-^[1;31m busy" in listing.stdout  # the next hop's reply, cat -v style
    assert "Subject: ^[]0;owned^Gtitle ^[[2J^[[H cleared" in shown.stdout
    assert "X-Clip: ^[]52;c;ZWNobyBvd25lZA==^G" in shown.stdout
    assert "X-C1: M-^[31mred \\u2028 \\x9b" in shown.stdout
