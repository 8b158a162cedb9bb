"""gateway.smtpd.protocol.enhance: every reply aiosmtpd writes itself gets a valid RFC 3463 code.

The reply texts are read from the installed aiosmtpd's source, so an upgrade that
adds a new reply is checked too (aiosmtpd qa/test_1testsuite.py: test_enhanced).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import aiosmtpd.smtp
import pytest

import gateway.reply
from gateway.reply import Reply, parse_reply_line
from gateway.smtpd.protocol import enhance

_REPLY_START = re.compile(r"^[2-5]\d\d[ -]")
# Sample values for the placeholders in aiosmtpd's format strings, in order of appearance.
_SAMPLES = ("ValueError", "something broke")


def _render_format(template: str) -> str:
    rendered = template
    for sample in _SAMPLES:
        rendered = rendered.replace("{}", sample, 1)
    return rendered


def _aiosmtpd_reply_templates() -> list[tuple[int, str]]:
    """(line number, rendered reply) for every reply-looking string literal in aiosmtpd/smtp.py."""
    source = Path(aiosmtpd.smtp.__file__).read_text()
    tree = ast.parse(source)
    inside_fstring: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside_fstring.update(id(child) for child in ast.walk(node) if child is not node)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in inside_fstring:
            text = "".join(part.value if isinstance(part, ast.Constant) else "NOOP" for part in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside_fstring:
            text = _render_format(node.value)
        else:
            continue
        if _REPLY_START.match(text):
            found.append((node.lineno, text))
    # "'250 Syntax: ' + help_str" style concatenations: the literal is found, the tail is added here.
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Add)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
            and _REPLY_START.match(node.left.value)
        ):
            found.append((node.lineno, node.left.value + "MAIL FROM: <address>"))
    return sorted(set(found))


def _excluded(line: str) -> bool:
    """Greeting and EHLO/HELO lines: the caller never passes them to enhance (RFC 2034 §3)."""
    return (
        line.startswith("220 ")
        and line != "220 Ready to start TLS"
        or line.startswith("250-")
        or line == "250 HELP"
        or line.startswith("250 ValueError")
    )  # '250 {}'.format(hostname): the HELO reply


TEMPLATES = _aiosmtpd_reply_templates()
# smtp_HELP builds its reply as '{} Supported commands: {}'.format(code, ...): no literal starts with a code.
EXTRA = [
    "250 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY",
    "501 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY",
    "502 Could not VRFY <not an address",
    "500 Error: (UnicodeDecodeError) 'utf-8' codec can't decode byte 0xff",
    '500 Error: command "XYZZY" not recognized',
    "503 Error: send EHLO first",
    "421 4.7.0 MAIL sent too many times",
]
LINES = sorted({line for _, line in TEMPLATES if not _excluded(line)} | set(EXTRA))


def test_aiosmtpd_source_scan_found_the_replies() -> None:
    # Guards the parametrization against an empty or broken scan.
    lines = {line for _, line in TEMPLATES}
    for expected in (
        "503 Error: need MAIL command",
        "503 Error: need RCPT command",
        "500 Error: bad syntax",
        "554 Command refused due to lack of security",
        "552 Error: Too much mail data",
        "501 Syntax: MAIL FROM: <address>",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 OK",
        "221 Bye",
        '500 Error: command "NOOP" not recognized',
        "503 Error: send NOOP first",
    ):
        assert expected in lines
    assert len(LINES) >= 50


@pytest.mark.parametrize("line", [line for line in LINES if not line.startswith("3")])
def test_every_aiosmtpd_reply_gets_a_matching_enhanced_code(line: str) -> None:
    enhanced = enhance(line)
    reply = parse_reply_line(enhanced)
    assert reply is not None, f"{line!r} became {enhanced!r}, which has no valid enhanced code"
    assert reply.code // 100 == int(line[0])
    assert int(reply.status[0]) == reply.code // 100
    assert "\r" not in enhanced and "\n" not in enhanced
    if re.match(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ", line):
        assert enhanced == line


@pytest.mark.parametrize("line", [line for line in LINES if line.startswith("3")])
def test_intermediate_replies_are_untouched(line: str) -> None:
    assert enhance(line) == line


def test_354_and_334_are_untouched() -> None:
    assert enhance("354 End data with <CR><LF>.<CR><LF>") == "354 End data with <CR><LF>.<CR><LF>"
    assert enhance("334 VXNlcm5hbWU6") == "334 VXNlcm5hbWU6"
    assert enhance("334 ") == "334 "


CATALOGUE = [value for value in vars(gateway.reply).values() if isinstance(value, Reply)]


@pytest.mark.parametrize("reply", CATALOGUE, ids=str)
def test_gateway_replies_are_untouched(reply: Reply) -> None:
    assert enhance(str(reply)) == str(reply)


@pytest.mark.parametrize(
    "line",
    [
        "250-2.0.0 first of several",
        "421 4.7.0 MAIL sent too many times",
        "538 5.7.11 Encryption required for requested authentication mechanism",
        "550 5.1.1",
        # A handler's reply with an enhanced code is trusted as is, even an unusual one.
        "250 2.6.0 Ok: queued",
    ],
)
def test_already_enhanced_lines_are_untouched(line: str) -> None:
    assert enhance(line) == line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("503 Error: nested MAIL command", "503 5.5.1 Error: nested MAIL command"),
        ("503 Error: send HELO first", "503 5.5.1 Error: send HELO first"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("500 Command line too long", "500 5.5.2 Error: line too long"),
        ("500 Line too long (see RFC5321 4.5.3.1.6)", "500 5.5.2 Error: line too long"),
        ("500 Error: strict ASCII mode", "500 5.6.7 Error: non-ASCII input without SMTPUTF8"),
        ('500 Error: command "XYZZY" not recognized', "502 5.5.2 Error: command not recognized"),
        ("552 Error: message size exceeds fixed maximum message size", str(gateway.reply.MESSAGE_TOO_BIG)),
        ("552 Error: Too much mail data", str(gateway.reply.MESSAGE_TOO_BIG)),
        ("530 Must issue a STARTTLS command first", str(gateway.reply.TLS_REQUIRED)),
        ("454 TLS not available", "454 4.7.0 TLS not available"),
        ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
        ("501 Syntax: RCPT TO: <address>", "501 5.5.4 Syntax: RCPT TO: <address>"),
        (
            "555 MAIL FROM parameters not recognized or not implemented",
            "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
        ),
        ("502 EXPN not implemented", "502 5.5.1 Error: command not implemented"),
        ("502 Could not VRFY x", "502 5.5.1 Error: command not implemented"),
        # Everything else gets the generic class code, text kept.
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        (
            "252 Cannot VRFY user, but will accept message and attempt delivery",
            "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
        ),
        ("503 Already authenticated", "503 5.0.0 Already authenticated"),
        ("250-first", "250-2.0.0 first"),
    ],
)
def test_specific_mappings(line: str, expected: str) -> None:
    assert enhance(line) == expected


@pytest.mark.parametrize("line", ["", "garbage", "25 short", "OK 250"])
def test_lines_without_a_reply_code_are_untouched(line: str) -> None:
    assert enhance(line) == line
