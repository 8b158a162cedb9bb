"""gateway.pipeline.received: the Received: field, and its date cached per second byte-identical to the stdlib's."""

from __future__ import annotations

import ipaddress
import math
import random
import tempfile
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from gateway.envelope import ClientInfo
from gateway.pipeline.received import received_header, rfc5322_date

# Hypothesis' own caches go to /tmp, not into the working tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hypothesis-tests-unit")


def _reference(now: float) -> str:
    return format_datetime(datetime.fromtimestamp(now, UTC))


def _near_whole_seconds() -> list[float]:
    """Timestamps just around whole seconds, where fromtimestamp's microsecond rounding carries."""
    values = []
    for second in (0, 1, 59, 86399, 951782399, 1700000000, 1735689599, 2**31 - 1, 2**31, 4102444799, 253402300799):
        for delta in (-1e-6, -5e-7, -4.9e-7, -5.1e-7, -1e-7, -1e-9, 0.0, 1e-9, 5e-7, 0.0009, 0.001, 0.5):
            values.append(second + delta)
        value = float(second)
        for _ in range(5):
            value = math.nextafter(value, -math.inf)
            values.append(value)
        values.append(second + 0.999)
        values.append(math.nextafter(second + 0.999, -math.inf))
        values.append(second + 0.9994995)
        values.append(second + 0.9999995)
    return [value for value in values if 0 <= value < 253402300799.9]  # the last second would round to year 10000


@pytest.mark.parametrize("now", _near_whole_seconds())
def test_date_near_whole_seconds(now: float) -> None:
    assert rfc5322_date(now) == _reference(now)
    if now >= 1.0:  # the second before, which moves the cache back
        assert rfc5322_date(now - 1.0) == _reference(now - 1.0)
    assert rfc5322_date(now) == _reference(now)  # once more, now from the cache


def test_date_for_many_timestamps_in_sequence() -> None:
    """Arrival-like sequences (several messages per second, sometimes back in time) and random jumps."""
    rng = random.Random(5322)
    now = 1700000000.0
    for _ in range(20000):
        now += rng.choice((0.0, 1e-6, 0.001, 0.013, 0.25, 0.9999996, 1.0, 61.0, -0.4, -1.0, -3600.0))
        assert rfc5322_date(now) == _reference(now), repr(now)
    for _ in range(20000):
        now = rng.uniform(0, 253402300799.999)
        assert rfc5322_date(now) == _reference(now), repr(now)
        assert rfc5322_date(float(int(now))) == _reference(float(int(now)))


@settings(max_examples=2000, deadline=None, database=None)
@given(st.floats(min_value=0.0, max_value=253402300799.0, allow_nan=False) | st.integers(0, 253402300799))
def test_date_matches_format_datetime(now: float) -> None:
    assert rfc5322_date(now) == _reference(now)
    assert rfc5322_date(now) == _reference(now)


@pytest.mark.parametrize("now", [-1.0, -0.5, -86400.25, -1e-7])
def test_date_before_1970_takes_the_plain_way(now: float) -> None:
    assert rfc5322_date(now) == _reference(now)


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, 1e300, 253402300800.0])
def test_date_out_of_range_raises_like_the_stdlib(now: float) -> None:
    with pytest.raises(Exception) as expected:
        _reference(now)
    with pytest.raises(expected.type):
        rfc5322_date(now)


def _client(**fields: object) -> ClientInfo:
    return ClientInfo(address=ipaddress.ip_address("192.0.2.1"), port=2525, listener="inbound", **fields)  # type: ignore[arg-type]


def test_received_header_single_recipient_over_tls() -> None:
    now = 1700000000.25
    client = _client(helo="mail.example.com", tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384")
    field = received_header(
        client,
        by_host="gw.example.net",
        queue_id="4ABCDEF",
        recipients=["bob@example.org"],
        extended=True,
        smtputf8=False,
        now=now,
    )
    assert field == (
        "Received: from mail.example.com (unknown [192.0.2.1])\r\n"
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
        "\tby gw.example.net (gateway) with ESMTPS id 4ABCDEF\r\n"
        f"\tfor <bob@example.org>; {_reference(now)}\r\n"
    ).encode("ascii")
    assert field.endswith(b"; Tue, 14 Nov 2023 22:13:20 +0000\r\n")


def test_received_header_several_recipients_and_odd_helo() -> None:
    now = 1735689599.9999996  # rounds up into 2025
    field = received_header(
        _client(helo="bad helo\x00\xe9"),
        by_host="gw.example.net",
        queue_id="Q1",
        recipients=["a@example.org", "b@example.org"],
        extended=False,
        smtputf8=False,
        now=now,
    )
    assert field == (
        "Received: from bad?helo?? (unknown [192.0.2.1])\r\n"
        "\tby gw.example.net (gateway) with SMTP id Q1;\r\n"
        "\tWed, 01 Jan 2025 00:00:00 +0000\r\n"
    ).encode("ascii")
    assert _reference(now) == "Wed, 01 Jan 2025 00:00:00 +0000"
