"""Log lines a client cannot forge, read by Debian's fail2ban with its stock ``postfix`` filter.

Issue 18: the raw HELO name was logged where Postfix logs the client's
verified name, so ``EHLO mx.victim.example[198.51.100.77]:25`` produced
``RCPT from mx.victim.example[198.51.100.77]:25...`` lines that fail2ban read as
198.51.100.77 (banning an innocent, sparing the attacker); ESC and CR bytes in
HELO reached the text log and the JSON log passed U+009B, U+009D and U+2028 raw.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.harness.helpers import relay_config

ATTACKER = "127.0.0.3"
VICTIM = "198.51.100.77"
FILTER = Path("/etc/fail2ban/filter.d/postfix.conf")
# A HELO that carries a victim's address in the shape of a Postfix client, a fake follow-on line
# after a bare CR (a command line ends at LF), terminal escapes, C1 controls and a line separator.
HELO = (
    "mx.victim.example[198.51.100.77]:25: 554 5.7.1 <x@victim.example>: Relay access denied"
    "\rDec  4 10:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[198.51.100.77]: 554 5.7.1 "
    "<y@victim.example>: Relay access denied\x1b[2K\x1b]0;title\x07 \u009b31m \u009d \u2028end"
)


FORGED_HELO = HELO.split("\r", 1)[0]  # the victim's address in Postfix's client shape, nothing else odd


def _session(port: int, helo: str) -> list[bytes]:
    replies = []
    with socket.create_connection(("127.0.0.1", port), source_address=(ATTACKER, 0), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for command in (
            b"EHLO " + helo.encode("utf-8"),
            b"MAIL FROM:<a@example.com>",
            b"RCPT TO:<x@other.example>",
            b"QUIT",
        ):
            sock.sendall(command + b"\r\n")
            while (reply := reader.readline())[3:4] == b"-":
                pass
            replies.append(reply)
    return replies


def _fail2ban_addresses(log_lines: list[str], tmp_path: Path) -> list[str]:
    log_file = tmp_path / "gateway.log"
    log_file.write_text("\n".join(log_lines) + "\n", encoding="utf-8", errors="surrogateescape")
    done = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(log_file), str(FILTER)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_forged_helo_makes_fail2ban_read_the_real_client_only(gateway_factory, sink, tmp_path, log_format):
    assert FILTER.is_file(), "fail2ban's stock filter: tests/peers/install-debian-packages.sh installs fail2ban"
    gateway = gateway_factory(relay_config(sink.port, f'log_format = "{log_format}"\n'))
    with gateway:
        # a HELO that only forges the address: accepted, and named in helo=<> only
        assert _session(gateway.port, FORGED_HELO)[2].startswith(b"554 5.7.1 ")
        gateway.wait_for_log(r"Relay access denied")
        # with control characters, a fake follow-on line and separators: not a host name, refused at EHLO
        assert _session(gateway.port, HELO)[0].startswith(b"501 5.5.2 Helo command rejected: Invalid name")
        gateway.wait_for_log(r"NOQUEUE: reject: EHLO from unknown\[127\.0\.0\.3\]:\d+: 501 5\.5\.2 ")
        gateway.wait_for_log(r"disconnect from", count=2)
    lines = list(gateway.lines)
    raw = "\n".join(lines).encode("utf-8", "surrogateescape")
    # not one control character, C1 control or separator of the client's reached the log
    assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]", raw)
    rejects = [line for line in lines if "Relay access denied;" in line and "RCPT from" in line]
    assert len(rejects) == 1  # the fake follow-on line stayed inside the EHLO line, which the filter does not read
    helo_rejects = [
        json.loads(line)["msg"] if log_format == "json" else line for line in lines if "Helo command rejected" in line
    ]
    assert len(helo_rejects) == 1, helo_rejects
    helo_reject = helo_rejects[0]
    assert "Relay access denied^MDec  4 " in helo_reject and "denied^[[2K^[]0;title^G" in helo_reject
    assert "M-^[31m M-^] \\u2028end>" in helo_reject
    if log_format == "text":
        (reject,) = rejects
        assert re.search(
            r"gateway\.smtpd\[\d+\]: NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.3\]:\d+: "
            r"554 5\.7\.1 <x@other\.example>: Relay access denied; ",
            reject,
        )
        assert "helo=<mx.victim.example[198.51.100.77]:25: 554" in reject
        assert _fail2ban_addresses(lines, tmp_path) == [ATTACKER]  # the filter reads it: the real client only
    else:
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert all(line.isascii() for line in lines if line.startswith("{"))
        (reject,) = [r["msg"] for r in records if "Relay access denied;" in r["msg"] and "RCPT from" in r["msg"]]
        assert reject.startswith("NOQUEUE: reject: RCPT from unknown[127.0.0.3]:")
        assert VICTIM not in _fail2ban_addresses(lines, tmp_path)
