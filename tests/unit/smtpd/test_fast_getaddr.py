"""GatewaySMTP._getaddr (the regex fast path) gives exactly aiosmtpd's ``SMTP._getaddr`` results.

The reference is aiosmtpd's own method called on the same protocol object, so
the comparison follows the installed aiosmtpd and Python (``email._header_value_parser``).
An outcome is the returned pair with the types of its items, or the exception type
(aiosmtpd's parser raises IndexError for a lone ``<``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from gateway.smtpd.connection_limits import ConnectionLimiter
from gateway.smtpd.protocol import GatewaySMTP

# Hypothesis' own caches (constants, Unicode tables) go to /tmp, not into the working tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hypothesis-tests-unit")

SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "max_examples": 3000,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
LOCAL_PART_LIMITS = (0, 64, 3)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[GatewaySMTP]]:
    """One protocol object per local_part_limit (never connected)."""
    loop = asyncio.new_event_loop()
    made = []
    for limit in LOCAL_PART_LIMITS:
        server = GatewaySMTP(
            object(),
            limiter=ConnectionLimiter(10, 10),
            tls_mode="none",
            server_tls=None,
            data_timeout=1.0,
            hostname="gw.example.net",
            loop=loop,
        )
        server.local_part_limit = limit
        made.append(server)
    yield made
    loop.close()


def _outcome(function: Any, server: GatewaySMTP, arg: str) -> tuple[Any, ...]:
    try:
        address, rest = function(server, arg)
    except Exception as error:  # noqa: BLE001 - the exception type is part of the outcome
        return ("raises", type(error))
    return (address, rest, type(address), type(rest))


def _assert_same(servers: list[GatewaySMTP], arg: str) -> None:
    for server in servers:
        expected = _outcome(SMTP._getaddr, server, arg)
        assert _outcome(GatewaySMTP._getaddr, server, arg) == expected, (arg, server.local_part_limit)


# --- building blocks for generated arguments ----------------------------------------------------

ATEXT = "abcxyzABCXYZ0189!#$%&'*+-/=?^_`{|}~"
SPECIALS = '()<>@,:;.\\"[]'
WHITESPACE = " \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
CONTROLS = "".join(map(chr, range(0x20))) + "\x7f\x80\x9f"
NON_ASCII = "\xe9\xfc\xdf\u4e2d\u0436\U0001f600\udc80\udcff\u200b\ufeff"  # \udcxx: surrogateescape'd bytes
INTERESTING = ATEXT + SPECIALS + WHITESPACE + CONTROLS + NON_ASCII

tricky_char = st.sampled_from(INTERESTING)
atext_run = st.text(alphabet=ATEXT + NON_ASCII, min_size=1, max_size=6)
dot_atom = st.lists(atext_run, min_size=1, max_size=3).map(".".join)
domain_literal = st.sampled_from(["[192.0.2.1]", "[IPv6:2001:db8::1]", "[]", "[ 1.2.3.4 ]", "[a\\]b]", "[1.2.3.4"])
quoted = st.text(alphabet=ATEXT + ' .@<>"\\\t\xe9', max_size=6).map(lambda text: '"' + text + '"')
encoded_word = st.sampled_from(["=?utf-8?q?j=C3=BCrgen?=", "=?us-ascii?b?YWJj?=", "=?x", "=?"])
local_part = st.one_of(dot_atom, quoted, encoded_word, st.text(alphabet=INTERESTING, max_size=6))
domain = st.one_of(dot_atom, domain_literal, encoded_word, st.text(alphabet=INTERESTING, max_size=6))
route = st.sampled_from(["", "", "@a,@b:", "@relay.example:", "@a :", ",@a:"])
space = st.text(alphabet=" \t\x0b\xa0", max_size=2)
comment = st.sampled_from(["", "", "(c)", "(x (nested)) ", "(unclosed"])
params = st.sampled_from(
    ["", "SIZE=1000", "BODY=8BITMIME SMTPUTF8", "size=12 x", "=", "<b@c>", ".x", "@x", "(c) SIZE=1", "\u3000SIZE=1"]
)


@st.composite
def address_argument(draw: st.DrawFn) -> str:
    """``[space]["<"][route]local["@"domain][">"][space][comment][params]`` with parts left out or mangled."""
    parts = [
        draw(st.sampled_from(["", "", "", " ", "\t", "\n", "("])),
        draw(st.sampled_from(["<", "<", "<", "", "<<"])),
        draw(route),
        draw(local_part),
        draw(st.sampled_from(["@", "@", "@", "", "@@"])),
        draw(domain),
        draw(st.sampled_from([">", ">", ">", "", ">>", " >"])),
        draw(space),
        draw(comment),
        draw(params),
    ]
    return "".join(parts)


@st.composite
def mutated_address(draw: st.DrawFn) -> str:
    """A common shape with one character inserted, replaced or removed somewhere."""
    base = draw(
        st.sampled_from(
            [
                "<alice@example.com>",
                "<a.b.c@d.e.f> SIZE=100",
                "<>",
                "<> SIZE=100",
                "bob@example.org",
                "bob@example.org BODY=8BITMIME",
                "<x@[192.0.2.7]>",
                "<j\xfcrgen@b\xfccher.example>",
                "<=x@y>",
            ]
        )
    )
    position = draw(st.integers(min_value=0, max_value=len(base)))
    char = draw(tricky_char)
    how = draw(st.sampled_from(["insert", "replace", "delete"]))
    if how == "insert":
        return base[:position] + char + base[position:]
    if how == "replace":
        return base[:position] + char + base[position + 1 :]
    return base[:position] + base[position + 1 :]


# --- the properties ------------------------------------------------------------------------------

EXAMPLES = [
    "",
    " ",
    "<",
    ">",
    "<>",
    "<> ",
    "<>  SIZE=10",
    "<>x",
    "<> (c)",
    "<<>>",
    " <>",
    "\t<a@b>",
    "\n<a@b>",
    "<a@b>",
    "<a@b> SIZE=10 BODY=8BITMIME",
    "<a@b>SIZE=10",
    "<a@b>  \x0b SIZE=1",
    "<a@b> (comment) SIZE=1",
    "<a@b>(c)",
    "<a@b> \u3000x",
    "<a@b >",
    "<a @b>",
    "< a@b>",
    "<a@b",
    "<a@b x",
    "<a@b.>",
    "<a@.b>",
    "<.a@b>",
    "<a.@b>",
    "<a..b@c>",
    "<a@b..c>",
    "<a@b@c>",
    "<@a,@b:x@y>",
    "<@a:x@y> SIZE=1",
    "<a>",
    "<a> x",
    '<"a b"@c>',
    '<"ab"@c>',
    '<"a\\"b"@c>',
    '<""@c>',
    '<"a@b"@c>',
    "<a(c)@b>",
    "<a@b(c)>",
    "<=?utf-8?q?x?=@b>",
    "<a@=?utf-8?q?x?=>",
    "<=?@b>",
    "<a=?x@b>",
    "<a@b=?>",
    "<a@[1.2.3.4]>",
    "<a@[IPv6:::1]> SIZE=1",
    "<a@[]>",
    "<a@[1.2.3.4]",
    "<a@[ 1.2.3.4 ]>",
    "<a@[a\\]b]>",
    "a@b",
    "a@b SIZE=1",
    "a@b  SIZE=1",
    "a@b\tSIZE=1",
    "a@b .c",
    "a@b @c",
    "a@b (c)",
    "a@b(c)",
    "a@b>",
    "a@b,c",
    "a@[1.2.3.4] x",
    "a@[1.2.3.4] .x",
    "a@b\x0bc",
    "a",
    "a SIZE=1",
    "@b",
    "<@b>",
    "a@",
    "<a@>",
    "<j\xfcrgen@b\xfccher.example>",
    "<\u4e2d\u6587@\u4f8b\u5b50.\u4e2d\u56fd>",
    "<a\udcff@b>",
    "<a@b\udc80>",
    "<a\x00@b>",
    "<a@b\x00>",
    "<a\x7f@b>",
    "<a\r@b>",
    "<a@b\r\n>",
    "<a@b>\r\n",
    "<a\x85@b>",
    "<a@b\x85c>",
    "<a@b\xa0c>",
    "<a\xa0b@c>",
    "<a@b\x1cc>",
    "<a@b\u2028c>",
    "<a@b\u200bc>",
    "x" * 100 + "@b",
    "<" + "x" * 65 + "@b>",
    "<abcd@b>",
    "<abc@b>",
    "<ab.cd@b>",
    '<"abcd"@b>',
]


@pytest.mark.parametrize("arg", EXAMPLES)
def test_examples_match_aiosmtpd(servers: list[GatewaySMTP], arg: str) -> None:
    _assert_same(servers, arg)


@settings(**SETTINGS)
@given(arg=address_argument())
def test_generated_addresses_match_aiosmtpd(servers: list[GatewaySMTP], arg: str) -> None:
    _assert_same(servers, arg)


@settings(**SETTINGS)
@given(arg=mutated_address())
@example(arg="<a@b>\x0b(c)")
def test_mutated_addresses_match_aiosmtpd(servers: list[GatewaySMTP], arg: str) -> None:
    _assert_same(servers, arg)


@settings(**SETTINGS)
@given(arg=st.text(alphabet=st.one_of(tricky_char, st.characters()), max_size=30))
def test_random_text_matches_aiosmtpd(servers: list[GatewaySMTP], arg: str) -> None:
    _assert_same(servers, arg)


@pytest.mark.parametrize("template", ["<a{c}b@x{c}y.z> S", "a{c}b@x{c}y.z", "<{c}@{c}>", "<a@b>{c}x", "a@b {c}x"])
def test_every_character_in_the_common_shapes(servers: list[GatewaySMTP], template: str) -> None:
    """Each code point of the BMP's first 12,544 and every whitespace or surrogate-escape one, in each shape."""
    chars = set(map(chr, range(0x3100)))
    chars.update(chr(point) for point in range(sys.maxunicode + 1) if chr(point).isspace())
    chars.update(map(chr, range(0xDC80, 0xDD00)))
    chars.update("\U0001f600\U000e0001\ufeff\ufffd")
    for char in sorted(chars):
        _assert_same(servers[:1], template.replace("{c}", char))


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<alice@example.com>", ("alice@example.com", "")),
        (
            "<bounce+x=y@lists.example.org> SIZE=1234 BODY=8BITMIME",
            ("bounce+x=y@lists.example.org", "SIZE=1234 BODY=8BITMIME"),
        ),
        ("<>", ("<>", "")),
        ("<> SIZE=10", ("<>", " SIZE=10")),
        ("bob@example.org SIZE=1", ("bob@example.org", "SIZE=1")),
        ("<x@[192.0.2.7]>", ("x@[192.0.2.7]", "")),
        ("<j\xfcrgen@b\xfccher.example> SMTPUTF8", ("j\xfcrgen@b\xfccher.example", "SMTPUTF8")),
        ("", ("", "")),
    ],
)
def test_common_shapes_take_the_fast_path(
    servers: list[GatewaySMTP], monkeypatch: pytest.MonkeyPatch, arg: str, expected: tuple[str, str]
) -> None:
    """The shapes seen in real traffic never reach email._header_value_parser."""

    def no_fallback(self: SMTP, arg: str) -> tuple[str | None, str | None]:
        raise AssertionError(f"fell back for {arg!r}")

    monkeypatch.setattr(SMTP, "_getaddr", no_fallback)
    assert servers[0]._getaddr(arg) == expected


def test_local_part_limit_on_the_fast_path(servers: list[GatewaySMTP]) -> None:
    limited = servers[LOCAL_PART_LIMITS.index(3)]
    assert limited._getaddr("<abc@example.com>") == ("abc@example.com", "")
    assert limited._getaddr("<abcd@example.com> SIZE=1") == (None, None)
    assert limited._getaddr("<>") == ("<>", "")
