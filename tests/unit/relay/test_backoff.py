"""Retry scheduling and queue lifetime (gateway.relay.backoff, Postfix qmgr rules)."""

from __future__ import annotations

import math
import random

import pytest

from gateway.relay.backoff import JITTER, Retry, is_expired, next_attempt

MIN = 300.0
MAX = 4000.0
NOW = 1_700_000_000.0


class FixedJitter(random.Random):
    """A Random whose ``uniform`` always returns the same fraction of the range."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def test_first_deferral_waits_minimal_backoff() -> None:
    retry = next_attempt(NOW, NOW, None, MIN, MAX, rng=FixedJitter(0.0))
    assert retry == Retry(at=NOW + MIN, delay=MIN)


def test_delay_doubles_then_clamps_without_jitter() -> None:
    rng = FixedJitter(0.0)
    last: float | None = None
    now = NOW
    delays = []
    for _ in range(7):
        retry = next_attempt(now, NOW, last, MIN, MAX, rng=rng)
        assert retry.at == pytest.approx(now + retry.delay)
        delays.append(retry.delay)
        # The next attempt happens on time; the age rule then never dominates.
        now, last = retry.at, retry.delay
    assert delays == [300.0, 600.0, 1200.0, 2400.0, 4000.0, 4000.0, 4000.0]


def test_doubling_with_seeded_rng_stays_within_jitter_band() -> None:
    rng = random.Random(1234)
    last: float | None = None
    now = NOW
    for _ in range(12):
        retry = next_attempt(now, NOW, last, MIN, MAX, rng=rng)
        base = MIN if last is None else min(2 * last, MAX)
        assert base <= retry.delay <= base * (1 + JITTER)
        assert retry.at == pytest.approx(now + retry.delay)
        now, last = retry.at, retry.delay
    assert last is not None and MAX <= last <= MAX * (1 + JITTER)


def test_seeded_rng_is_reproducible() -> None:
    def schedule(seed: int) -> list[Retry]:
        rng = random.Random(seed)
        out, last, now = [], None, NOW
        for _ in range(8):
            retry = next_attempt(now, NOW, last, MIN, MAX, rng=rng)
            out.append(retry)
            now, last = retry.at, retry.delay
        return out

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


@pytest.mark.parametrize("last_delay", [None, 10.0, 300.0, 1000.0, 3999.0, 4000.0, 1e9])
def test_jitter_bounds_over_many_draws(last_delay: float | None) -> None:
    rng = random.Random(42)
    delays = [next_attempt(NOW, NOW, last_delay, MIN, MAX, rng=rng).delay for _ in range(5000)]
    assert min(delays) >= MIN
    assert max(delays) <= MAX * (1 + JITTER)
    base = MIN if last_delay is None else min(max(2 * last_delay, MIN), MAX)
    # The jitter is spread over the whole +0..10 % band, not a constant.
    assert min(delays) < base * 1.005
    assert max(delays) > base * 1.095
    assert sum(delays) / len(delays) == pytest.approx(base * (1 + JITTER / 2), rel=0.01)


def test_default_rng_respects_bounds() -> None:
    for _ in range(1000):
        retry = next_attempt(NOW, NOW, 2000.0, MIN, MAX)
        assert MAX <= retry.delay <= MAX * (1 + JITTER)


def test_age_wins_after_an_outage() -> None:
    # Postfix qmgr_active.c: the delay is at least the time in queue.
    retry = next_attempt(NOW, NOW - 3000.0, 300.0, MIN, MAX, rng=FixedJitter(0.0))
    assert retry.delay == 3000.0
    retry = next_attempt(NOW, NOW - 86400.0, None, MIN, MAX, rng=FixedJitter(0.0))
    assert retry.delay == MAX


def test_clock_stepped_back_gives_minimal_backoff() -> None:
    retry = next_attempt(NOW, NOW + 3600.0, None, MIN, MAX, rng=FixedJitter(0.0))
    assert retry.delay == MIN


def test_maximal_jitter_stays_at_upper_bound() -> None:
    retry = next_attempt(NOW, NOW, MAX, MIN, MAX, rng=FixedJitter(1.0))
    assert retry.delay == pytest.approx(MAX * (1 + JITTER))
    assert retry.delay <= MAX * (1 + JITTER)


def test_shrunk_test_timings() -> None:
    rng = FixedJitter(0.0)
    assert next_attempt(NOW, NOW, None, 0.1, 1.0, rng=rng).delay == pytest.approx(0.1)
    assert next_attempt(NOW, NOW, 0.4, 0.1, 1.0, rng=rng).delay == pytest.approx(0.8)
    assert next_attempt(NOW, NOW, 0.8, 0.1, 1.0, rng=rng).delay == pytest.approx(1.0)


def test_equal_min_and_max_backoff() -> None:
    rng = random.Random(3)
    for last in (None, 1.0, 500.0):
        retry = next_attempt(NOW, NOW, last, 500.0, 500.0, rng=rng)
        assert 500.0 <= retry.delay <= 550.0


@pytest.mark.parametrize(
    ("last_delay", "minimal", "maximal"),
    [
        (None, 500.0, 400.0),
        (None, -1.0, 400.0),
        (-5.0, 300.0, 4000.0),
        (math.nan, 300.0, 4000.0),
        (math.inf, 300.0, 4000.0),
        (None, math.nan, 4000.0),
        (None, 300.0, math.inf),
    ],
)
def test_invalid_parameters_raise(last_delay: float | None, minimal: float, maximal: float) -> None:
    with pytest.raises(ValueError):
        next_attempt(NOW, NOW, last_delay, minimal, maximal)


def test_invalid_times_raise() -> None:
    with pytest.raises(ValueError):
        next_attempt(math.nan, NOW, None, MIN, MAX)
    with pytest.raises(ValueError):
        next_attempt(NOW, math.inf, None, MIN, MAX)


@pytest.mark.parametrize(
    ("age", "lifetime", "expired"),
    [
        (0.0, 5 * 86400.0, False),
        (5 * 86400.0 - 1, 5 * 86400.0, False),
        (5 * 86400.0, 5 * 86400.0, True),
        (6 * 86400.0, 5 * 86400.0, True),
        (0.0, 0.0, True),  # maximal_queue_lifetime=0: one attempt only
        (-60.0, 0.0, True),  # even when the clock went backwards
        (-60.0, 10.0, False),
        (0.5, 0.5, True),
    ],
)
def test_is_expired(age: float, lifetime: float, expired: bool) -> None:
    assert is_expired(NOW + age, NOW, lifetime) is expired


def test_is_expired_rejects_negative_or_nan_lifetime() -> None:
    with pytest.raises(ValueError):
        is_expired(NOW, NOW, -1.0)
    with pytest.raises(ValueError):
        is_expired(NOW, NOW, math.nan)


def test_retry_is_frozen() -> None:
    retry = Retry(at=1.0, delay=1.0)
    with pytest.raises(AttributeError):
        retry.at = 2.0  # type: ignore[misc]
