"""gateway.values: Postfix time units (postconf(5) "time units"), sizes and the short duration form."""

from __future__ import annotations

import math

import pytest

from gateway.values import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5d", 5 * 86400.0),
        ("300s", 300.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("300", 300.0),
        ("0", 0.0),
        (" 10m ", 600.0),
        ("10 m", 600.0),
        (300, 300.0),
        (0, 0.0),
        (0.25, 0.25),
        (4000, 4000.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    result = parse_duration(text)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "5x",
        "d",
        "5dd",
        "5 days",
        "-5s",
        "-1",
        "1e3",
        "5D",
        "5S",
        "1,5h",
        "5d3h",
        "ten",
        ".5s",
        "5.s",
        -1,
        -0.5,
        True,
        False,
        None,
        [300],
    ],
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_duration(text)  # type: ignore[arg-type]


def test_parse_duration_error_names_the_value() -> None:
    with pytest.raises(ValueError, match="'5x'"):
        parse_duration("5x")


# Regression: NaN used to pass, since 'value < 0' is false for NaN.
def test_parse_duration_rejects_nan() -> None:
    with pytest.raises(ValueError):
        parse_duration(math.nan)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("50M", 50 * 1024 * 1024),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("1G", 1024**3),
        ("1g", 1024**3),
        ("10m", 10 * 1024 * 1024),
        ("10MB", 10 * 1024 * 1024),
        ("100b", 100),
        ("10240000", 10240000),
        (" 42 ", 42),
        (10240000, 10240000),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    result = parse_size(text)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "M",
        "1.5M",
        "50T",
        "-1",
        "50 megabytes",
        "1e6",
        "0x10",
        -1,
        True,
        10240000.0,
        None,
    ],
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5 * 86400, "5d"),
        (300, "5m"),
        (301, "301s"),
        (90, "90s"),
        (3600, "1h"),
        (7200.0, "2h"),
        (604800, "1w"),
        (2 * 604800, "2w"),
        (8 * 86400, "8d"),
        (4000, "4000s"),
        (1.5, "1.5s"),
        (0, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 300, 3599, 3600, 86400, 5 * 86400, 604800, 1.5, 4000])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
