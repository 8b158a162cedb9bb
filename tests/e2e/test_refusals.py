"""One reply seam: every SMTP stage refused, each counted in gateway_messages_rejected_total and logged.

Issue 11: the verdict-to-reply block was written out in each hook and had
drifted (EHLO and HELO rejections were neither counted nor logged). Each stage
is driven to a refusal here over real sockets against a real gateway; the
metric is read from its /metrics with prometheus_client's parser, and every
refusal has its ``NOQUEUE: reject: STAGE from ...`` line (DATA: the
transaction's ``result=reject`` line). A source scan checks that the SMTP edge
sends no reply text of its own outside the catalogue.
"""

from __future__ import annotations

import ast
import re
import socket
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness.helpers import http_get, raw_session, relay_config

ROOT = Path(__file__).resolve().parents[2]
UNTRUSTED = "127.0.0.3"
CATALOGUE = {ROOT / "gateway/reply.py", ROOT / "gateway/smtpd/replies.py", ROOT / "gateway/relay/replies.py"}


def _rejected(gateway) -> dict[tuple[str, str, str], float]:
    _, text = http_get(gateway.metrics_url + "/metrics")
    return {
        (s.labels["stage"], s.labels["reason"], s.labels["reply_class"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "gateway_messages_rejected"
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_each_stage_refused_is_counted_and_logged(gateway_factory, sink):
    # workers = 1: back-to-back sessions under a per-client limit of 1; with several workers the next
    # connection can reach another worker before the last one's close is counted (as with Postfix's anvil)
    gateway = gateway_factory(
        relay_config(sink.port, 'message_size_limit = "4k"\nsmtpd_client_connection_count_limit = 1\nworkers = 1\n')
    )
    with gateway:
        port = gateway.port

        def send(lines: list[bytes]) -> list[bytes]:
            return raw_session(port, lines, UNTRUSTED)

        hops = b"".join(b"Received: from h%d by h%d; Fri, 4 Dec 2026 10:00:00 +0000\r\n" % (n, n) for n in range(60))
        assert send([b"HELO bad\x1bname"])[1].startswith(b"501 5.5.2 ")
        assert send([b"EHLO bad\x07name"])[1].startswith(b"501 5.5.2 ")
        assert send([b"EHLO client.test", b"MAIL FROM:<a\x01b@example.com>"])[2].startswith(b"501 5.1.7 ")
        assert send([b"EHLO client.test", b"MAIL FROM:<a@example.com>", b"RCPT TO:<x@elsewhere.org>"])[3].startswith(
            b"554 5.7.1 "
        )
        data = send(
            [
                b"EHLO client.test",
                b"MAIL FROM:<a@example.com>",
                b"RCPT TO:<x@example.net>",
                b"DATA",
                hops + b"\r\nbody\r\n.",
            ]
        )
        assert data[5].startswith(b"554 5.4.6 "), data
        big = send(
            [
                b"EHLO client.test",
                b"MAIL FROM:<a@example.com>",
                b"RCPT TO:<x@example.net>",
                b"DATA",
                b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 80 + b".",
            ]
        )
        assert big[5].startswith(b"552 5.3.4 "), big
        with socket.create_connection(("127.0.0.1", port), source_address=(UNTRUSTED, 0), timeout=10) as first:
            first.recv(100)
            assert send([])[0].startswith(b"421 4.7.0 ")  # a second connection over the limit

        for stage in ("HELO", "EHLO", "MAIL", "RCPT", "CONNECT"):
            gateway.wait_for_log(rf"NOQUEUE: reject: {stage} from unknown\[127\.0\.0\.3\]:\d+: [45]\d\d [45]\.")
        gateway.wait_for_log(r"result=reject \(554 5\.4\.6 Too many hops\) reason=hopcount")
        gateway.wait_for_log(r"NOQUEUE: reject: DATA from unknown\[127\.0\.0\.3\]:\d+: 552 5\.3\.4 ")
        counted = _rejected(gateway)
    expected = {
        ("helo", "invalid_helo", "5xx"),
        ("ehlo", "invalid_helo", "5xx"),
        ("mail", "bad_address", "5xx"),
        ("rcpt", "relay_denied", "5xx"),
        ("data", "hopcount", "5xx"),
        ("data", "message_size_limit", "5xx"),
        ("connect", "connection_limit", "4xx"),
    }
    assert {key: counted.get(key) for key in expected} == {key: 1.0 for key in expected}, counted


def _string_constants(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            found.append((node.lineno, str(node.values[0].value)))
    return found


def test_the_smtp_edge_sends_no_reply_text_outside_the_catalogue():
    reply_line = re.compile(r"^[2-5]\d\d[ -]")
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")) + sorted((ROOT / "policies").rglob("*.py")):
        if path in CATALOGUE:
            continue
        for line, text in _string_constants(path):
            if reply_line.match(text):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert offenders == []
    # ... nor builds a Reply of its own: the SMTP edge, the policies' verdicts and the relay side
    # (the replies it records for recipients) all take theirs from the catalogue
    builders = sorted((ROOT / "gateway").rglob("*.py")) + sorted((ROOT / "policies").rglob("*.py"))
    assert {ROOT / "gateway/relay/client.py", ROOT / "policies/antivirus.py"} <= set(builders)
    for path in builders:
        if path in CATALOGUE:
            continue
        source = path.read_text()
        assert not re.search(r"(?<![\w.], UNTRUSTED)Reply\(\s*\d", source), path
