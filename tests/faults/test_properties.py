"""Property-based tests (hypothesis) against ONE running gateway.

(a) Random SMTP dialogues drawn from a grammar of commands, arguments and junk
    bytes: every reply line has a 3-digit code; every reply except the banner,
    replies to EHLO/HELO/HELP and 354 carries an RFC 3463 enhanced code whose
    class matches; the server still answers EHLO after each dialogue and never
    logs a traceback.
(b) Address parsing: random local parts and domains with ``%``, ``!``, quotes,
    source routes and IDNs, from an untrusted client (127.0.0.2, outside
    ``mynetworks``): RCPT never gets a 250 unless the final domain is
    example.net and the local part has none of ``% ! @``; nothing reaches the
    relayhost for a refused address.

Control characters inside MAIL/RCPT addresses are left out of the generated
arguments; they have their own test
(test_hostile_clients.py::test_control_characters_in_envelope_addresses_never_block_delivery).

Bounded: ``max_examples`` per property, at most ``MAX_STEPS`` commands per
dialogue, socket timeouts on every read; ``database=None`` and Hypothesis' caches in /tmp
(nothing is written to the working tree).
"""

from __future__ import annotations

import re
import ssl
import string
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests.faults.helpers import (
    UNTRUSTED,
    SmtpLine,
    reply_code,
    running_gateway,
    still_serving,
    wait_until,
)
from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink

# Hypothesis' own caches (constants, Unicode tables) go to /tmp, not into the working tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hypothesis-tests-faults")

MAX_STEPS = 20
PROPERTY_EXTRA = (
    'smtpd_recipient_limit = 4\nmessage_size_limit = 5000\nsmtpd_timeout = "20s"\nsmtpd_data_timeout = "10s"\n'
)
ENHANCED_RE = re.compile(r"^([2-5])\d\d[ -]([2-5])\.(\d{1,3})\.(\d{1,3})( |$)")
SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": False,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}


@pytest.fixture(scope="module")
def psink(fault_workers: int) -> Iterator[SmtpSink]:  # one per shape: fresh messages
    with SmtpSink() as server:
        yield server


@pytest.fixture(scope="module")
def pgw(psink: SmtpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(
        tmp_path_factory.mktemp("properties") / "gw", relay_config(psink.port, PROPERTY_EXTRA)
    ) as gateway:
        yield gateway


# ---------------------------------------------------------------- (a) dialogues


def _printable_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Argument fuzz: printable ASCII and 8-bit bytes, no control characters (see the module docstring)."""
    alphabet = [b for b in range(0x20, 0x100) if b != 0x7F]
    return st.lists(st.sampled_from(alphabet), max_size=max_size).map(bytes)


_junk_line = st.one_of(
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")),  # anything but a line end
    st.integers(min_value=480, max_value=3000).map(lambda n: b"X" * n),  # around and over the limits
    st.sampled_from(
        [
            b"",
            b" ",
            b"\x00",
            b"\r",
            b"\xff\xfe",
            b"MAIL",
            b"RCPT",
            b"DATA x",
            b"BDAT 10 LAST",
            b"AUTH LOGIN",
            b"AUTH PLAIN AGFhAGI=",
            b"XCLIENT ADDR=1.2.3.4",
            b"ETRN example.com",
            b"TURN",
            b"STARTTLS now",
            b"QUIT now",
        ]
    ),
)
_host = st.sampled_from([b"client.test", b"[127.0.0.1]", b"x", b"\xc3\xa9xample.test", b"a" * 300])
_sender = st.one_of(
    st.sampled_from(
        [
            b"<a@example.com>",
            b"<>",
            b"<bad>",
            b"<a@[127.0.0.1]>",
            b"a@example.com",
            b"<@route.example:a@example.com>",
            b"<j\xc3\xb6@ex\xc3\xa4mple.com>",
            b"<a@b@c>",
            b'<"quoted local"@example.com>',
            b"<a@example.com",
            b"",
        ]
    ),
    _printable_bytes(40).map(lambda b: b"<" + b + b">"),
)
_recipient = st.one_of(
    st.sampled_from(
        [
            b"<b@elsewhere.org>",
            b"<user@example.net>",
            b"<x%y@example.net>",
            b"<postmaster>",
            b"<>",
            b"<b@>",
            b"<@example.net:b@elsewhere.org>",
            b"<u!v@example.net>",
            b'<"a@b"@example.net>',
            b"<z\xc3\xbc@example.net>",
            b"b@elsewhere.org",
        ]
    ),
    _printable_bytes(40).map(lambda b: b"<" + b + b">"),
)
_mail_params = st.lists(
    st.sampled_from(
        [
            b" SIZE=100",
            b" SIZE=99999999",
            b" SIZE=x",
            b" BODY=8BITMIME",
            b" BODY=7BIT",
            b" BODY=BOGUS",
            b" SMTPUTF8",
            b" FOO=BAR",
            b" AUTH=<>",
            b" RET=HDRS",
            b" ENVID=x",
        ]
    ),
    max_size=3,
).map(b"".join)
_rcpt_params = st.lists(st.sampled_from([b" NOTIFY=NEVER", b" ORCPT=rfc822;x@y", b" FOO", b" SIZE=1"]), max_size=2).map(
    b"".join
)
_body = st.one_of(
    st.lists(st.binary(max_size=90).map(lambda b: b.replace(b"\r", b"")), max_size=6),
    st.lists(st.sampled_from([b"y" * 1200, b".", b"..", b"\x00", b"\xff" * 80, b"Subject: x"]), max_size=4),
    st.integers(min_value=60, max_value=120).map(lambda n: [b"z" * 78] * n),  # over message_size_limit
)

_command = st.one_of(
    st.tuples(st.sampled_from([b"EHLO", b"HELO", b"ehlo", b"Helo"]), st.one_of(st.just(b""), _host)).map(
        lambda t: t[0] + (b" " + t[1] if t[1] else b"")
    ),
    st.tuples(st.sampled_from([b"MAIL FROM:", b"mail from:", b"MAIL FROM: ", b"MAIL TO:"]), _sender, _mail_params).map(
        b"".join
    ),
    st.tuples(st.sampled_from([b"RCPT TO:", b"rcpt to:", b"RCPT TO: ", b"RCPT FROM:"]), _recipient, _rcpt_params).map(
        b"".join
    ),
    st.just(b"DATA"),
    st.sampled_from(
        [
            b"RSET",
            b"NOOP",
            b"NOOP hello",
            b"QUIT",
            b"VRFY postmaster",
            b"EXPN staff",
            b"HELP",
            b"HELP MAIL",
            b"HELP BOGUS",
            b"STARTTLS",
            b"RSET x",
        ]
    ),
    _junk_line,
)


@dataclass
class Step:
    line: bytes
    body: list[bytes]  # sent after a 354 (dot-stuffed, CRLF . CRLF appended)


_step = st.builds(Step, _command, _body)
_no_body: list[bytes] = []
_good_sender = st.sampled_from(
    [
        b"MAIL FROM:<a@example.com>",
        b"MAIL FROM:<>",
        b"MAIL FROM:<a@example.com> SIZE=100",
        b"MAIL FROM:<j\xc3\xb6@ex\xc3\xa4mple.com> SMTPUTF8 BODY=8BITMIME",
    ]
)
_good_recipient = st.sampled_from(
    [
        b"RCPT TO:<b@elsewhere.org>",
        b"RCPT TO:<user@example.net>",
        b"RCPT TO:<c@elsewhere.org> NOTIFY=NEVER",
        b"RCPT TO:<z\xc3\xbc@example.net>",
    ]
)
_transaction = st.tuples(
    _good_sender.map(lambda line: Step(line, _no_body)),
    st.lists(_good_recipient.map(lambda line: Step(line, _no_body)), min_size=1, max_size=3),
    st.builds(Step, st.just(b"DATA"), _body),
).map(lambda t: [t[0], *t[1], t[2]])
_skeleton = st.tuples(
    st.sampled_from([Step(b"EHLO client.test", _no_body), Step(b"HELO client.test", _no_body)]),
    st.lists(_transaction, min_size=1, max_size=3),
).map(lambda t: [t[0]] + [step for group in t[1] for step in group])
_mutation = st.tuples(
    st.integers(min_value=0, max_value=MAX_STEPS), st.sampled_from(["insert", "replace", "delete"]), _step
)


def _mutate(skeleton: list[Step], mutations: list[tuple[int, str, Step]]) -> list[Step]:
    steps = list(skeleton)
    for index, kind, step in mutations:
        position = index % (len(steps) + 1)
        if kind == "insert" or position == len(steps):
            steps.insert(position, step)
        elif kind == "replace":
            steps[position] = step
        else:
            del steps[position]
    return steps[:MAX_STEPS]


# Mostly well-formed dialogues with a few steps inserted, replaced or deleted (so that DATA and the end
# of data are reached often), and some entirely random ones.
_dialogue = st.one_of(
    st.builds(_mutate, _skeleton, st.lists(_mutation, max_size=4)),
    st.builds(_mutate, _skeleton, st.lists(_mutation, max_size=4)),
    st.lists(_step, min_size=1, max_size=MAX_STEPS),
)


def _verb(line: bytes) -> bytes:
    return line.partition(b" ")[0].upper()


def _check_reply(lines: list[str], verb: bytes, problems: list[str]) -> None:
    codes = {reply_code(line) for line in lines}
    if None in codes or len(codes) != 1:
        problems.append(f"malformed reply to {verb!r}: {lines}")
        return
    (code,) = codes
    if code == 354 or verb in (b"EHLO", b"HELO", b"HELP"):
        return
    for line in lines:
        match = ENHANCED_RE.match(line)
        if match is None or match.group(1) != match.group(2):
            problems.append(f"reply to {verb!r} without a matching enhanced code: {line!r}")


def _run_dialogue(port: int, ca_file, steps: list[Step], stats: Counter[str]) -> list[str]:  # type: ignore[no-untyped-def]
    problems: list[str] = []
    with SmtpLine(port, timeout=20) as client:
        banner = client.reply()
        if not banner[0].startswith("220 "):
            return [f"banner {banner}"]
        for step in steps:
            verb = _verb(step.line)
            try:
                client.send(step.line + b"\r\n")
                lines = client.reply()
            except (ConnectionError, OSError):
                break  # the server may close (QUIT, too many bogus commands); "still serving" is checked after
            _check_reply(lines, verb, problems)
            code = reply_code(lines[-1])
            stats["replies"] += 1
            stats[f"{code}"] += 1
            if verb == b"QUIT" and code == 221:
                break
            if code == 354:
                stuffed = [b"." + line if line.startswith(b".") else line for line in step.body]
                try:
                    client.send(b"".join(line + b"\r\n" for line in stuffed) + b".\r\n")
                    lines = client.reply()
                except (ConnectionError, OSError):
                    break
                _check_reply(lines, b"<end of data>", problems)
                stats[f"end of data {reply_code(lines[-1])}"] += 1
            elif verb == b"STARTTLS" and code == 220:
                if client.buffer:
                    problems.append(f"plaintext after the 220 to STARTTLS: {client.buffer[:200]!r}")
                    break
                try:
                    client.starttls(ca_file)
                    stats["TLS"] += 1
                except (ssl.SSLError, OSError) as error:
                    problems.append(f"TLS handshake after 220 failed: {error}")
                    break
    return problems


def test_random_dialogues_get_well_formed_replies_and_never_crash_the_server(pgw):
    examples = 0
    stats: Counter[str] = Counter()

    @settings(max_examples=100, **SETTINGS)
    @given(_dialogue)
    def dialogue(steps: list[Step]) -> None:
        nonlocal examples
        examples += 1
        problems = _run_dialogue(pgw.port, pgw.ca_file, steps, stats)
        assert problems == [], problems
        still_serving(pgw.port)

    dialogue()
    print(f"{examples} dialogues: {dict(sorted(stats.items()))}")
    assert examples >= 100
    log = pgw.log_text
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert pgw.process is not None and pgw.process.poll() is None, "the gateway exited"


# ---------------------------------------------------------------- (b) addresses

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
QTEXT = "".join(c for c in string.printable if c not in '"\\\r\n\t\x0b\x0c')
UTF8_LETTERS = "äöüéßжπ中"


@dataclass(frozen=True)
class Address:
    route: str  # "" or "@a.example,@b.example:"
    local: str  # as written (dot-atom or quoted-string)
    domain: str

    @property
    def text(self) -> str:
        return f"{self.route}{self.local}@{self.domain}"

    @property
    def local_content(self) -> str:
        """The local part's characters without the quoting."""
        if self.local.startswith('"') and self.local.endswith('"') and len(self.local) >= 2:
            return re.sub(r"\\(.)", r"\1", self.local[1:-1])
        return self.local

    @property
    def may_relay(self) -> bool:
        """The oracle: only example.net (case-insensitive; DNS root dot allowed), no routing characters."""
        domain = self.domain.lower()
        domain = domain.removesuffix(".")
        return domain == "example.net" and not any(c in self.local_content for c in "%!@")

    @property
    def plain(self) -> bool:
        """A dot-atom of letters and digits at example.net, no route: must be accepted."""
        return (
            not self.route
            and re.fullmatch(r"[A-Za-z0-9]+(\.[A-Za-z0-9]+)*", self.local) is not None
            and self.domain.lower() == "example.net"
        )


_atom = st.text(alphabet=ATEXT, min_size=1, max_size=8)
_dot_atom = st.lists(_atom, min_size=1, max_size=3).map(".".join)
_quoted = st.lists(
    st.one_of(st.sampled_from(list(QTEXT)), st.sampled_from(['\\"', "\\\\", "\\@", "\\%"])), max_size=12
).map(lambda parts: '"' + "".join(parts) + '"')
_utf8_local = st.text(alphabet=string.ascii_lowercase + UTF8_LETTERS, min_size=1, max_size=8)
_local = st.one_of(
    _dot_atom,
    _quoted,
    _utf8_local,
    st.sampled_from(
        [
            "user",
            "user%elsewhere.org",
            "elsewhere.org!user",
            '"user@elsewhere.org"',
            '"user"',
            "us.er",
            '"user%x"',
            "user+tag",
            '"a b"',
            "postmaster",
        ]
    ),
)
_label = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=10)
_idn_label = st.text(alphabet=string.ascii_lowercase + UTF8_LETTERS, min_size=1, max_size=8)
_random_domain = st.lists(st.one_of(_label, _idn_label), min_size=1, max_size=3).map(".".join)
_domain = st.one_of(
    st.sampled_from(
        [
            "example.net",
            "EXAMPLE.NET",
            "Example.Net",
            "example.net.",
            "sub.example.net",
            "example.net.evil.org",
            "example.netx",
            "xexample.net",
            "example.org",
            "elsewhere.org",
            "exämple.net",
            "xn--exmple-cua.net",
            "[127.0.0.1]",
            "[IPv6:::1]",
            "localhost",
            "example..net",
            "example.net.example.org",
        ]
    ),
    _random_domain.map(lambda d: d + ".example.net"),
    _random_domain,
)
_route = st.one_of(
    st.just(""), st.lists(_domain, min_size=1, max_size=2).map(lambda ds: ",".join("@" + d for d in ds) + ":")
)
_address = st.builds(Address, _route, _local, _domain)


@dataclass
class Case:
    number: int
    address: Address
    reply: str
    queue_id: str | None


def _try_address(port: int, number: int, address: Address) -> Case:
    with SmtpLine(port, UNTRUSTED, timeout=20) as client:
        assert client.reply()[0].startswith("220 ")
        assert client.command("EHLO outsider.test").startswith("250 ")
        assert client.command(f"MAIL FROM:<case{number}@ext.example> SMTPUTF8").startswith("250 ")
        reply = client.command(b"RCPT TO:<" + address.text.encode("utf-8") + b">")
        assert client.command(f"RCPT TO:<marker{number}@example.net>").startswith("250 ")
        assert client.command("DATA").startswith("354 ")
        client.send(f"Subject: address case {number}\r\n\r\nbody\r\n.\r\n".encode())
        done = client.reply()[-1]
        assert done.startswith("250 2.0.0 Ok: queued as "), done
        client.command("QUIT")
    return Case(number, address, reply, done.rsplit(" ", 1)[1])


def test_untrusted_rcpt_is_accepted_only_for_example_net_without_routing_characters(pgw, psink):
    cases: list[Case] = []

    @settings(max_examples=120, **SETTINGS)
    @given(_address)
    def rcpt(address: Address) -> None:
        case = _try_address(pgw.port, len(cases), address)
        cases.append(case)
        code = reply_code(case.reply)
        assert code is not None, case
        if code == 250:
            assert address.may_relay, f"relay opened for <{address.text}>: {case.reply}"
        else:
            assert case.reply[0] in "45" and ENHANCED_RE.match(case.reply), case.reply
        if address.plain:
            assert code == 250, f"<{address.text}> refused: {case.reply}"

    rcpt()
    assert len(cases) >= 100
    accepted = [c for c in cases if c.reply.startswith("250")]
    refused = [c for c in cases if not c.reply.startswith("250")]
    print(f"{len(cases)} addresses: {len(accepted)} accepted, {len(refused)} refused")
    assert accepted and refused  # both sides of the property were exercised

    # Every transaction was delivered (to its marker at least); a refused address never went anywhere.
    for case in cases:
        pgw.wait_for_log(rf"{case.queue_id}: removed", timeout=30)
    wait_until(
        lambda: all(psink.messages_for(f"marker{c.number}@example.net") for c in cases),
        timeout=30,
        what="every marker message at the relayhost",
    )
    for case in refused:
        from_case = [m for m in psink.messages if m.mail_from == f"case{case.number}@ext.example"]
        assert [m.rcpt_tos for m in from_case] == [[f"marker{case.number}@example.net"]], (case, from_case)
    for case in accepted:  # the marker, and at most the one accepted address (unless the relayhost refused it)
        for message in (m for m in psink.messages if m.mail_from == f"case{case.number}@ext.example"):
            assert f"marker{case.number}@example.net" in message.rcpt_tos and len(message.rcpt_tos) <= 2, message
    assert "Traceback" not in pgw.log_text
