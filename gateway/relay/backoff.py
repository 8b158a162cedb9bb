"""When to retry a deferred message, and when to give up on it.

The rules follow the Postfix queue manager (``postfix/src/qmgr/qmgr_active.c:
qmgr_active_done_3_generic``, ``QSHAPE_README``, postconf(5)
``minimal_backoff_time`` / ``maximal_backoff_time`` / ``maximal_queue_lifetime``):

* the first deferral waits ``minimal_backoff``; each later one waits twice the
  previous delay; the delay is clamped to ``[minimal_backoff, maximal_backoff]``;
* the delay is never shorter than the message's age (time since arrival), which is
  Postfix's own rule: when retries run on time this is the same as doubling, and
  after an outage (the gateway was down, the record lost ``last_delay``) it spreads
  old messages out instead of retrying them all at the minimal interval;
* up to +10 % random jitter is added, so a destination that comes back does not
  receive every deferred message in the same second;
* a message whose age reaches the queue lifetime is expired (its deferred
  recipients bounce); a lifetime of 0 means "one attempt only".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

JITTER = 0.10
"""Largest random extra delay, as a fraction of the computed delay."""

# Jitter is not security relevant; one shared generator avoids re-seeding per call.
_DEFAULT_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class Retry:
    """A scheduled retry.

    Attributes:
        at: unix seconds of the next delivery attempt (``now + delay``).
        delay: seconds from ``now`` to ``at``, jitter included; store it as the
            entry's ``last_delay`` so the next deferral doubles it.
    """

    at: float
    delay: float


def next_attempt(
    now: float,
    arrival: float,
    last_delay: float | None,
    minimal_backoff: float,
    maximal_backoff: float,
    *,
    rng: random.Random | None = None,
) -> Retry:
    """Return when to try a deferred message again (Postfix qmgr backoff).

    The base delay is ``minimal_backoff`` on the first deferral (``last_delay`` is
    None) and ``2 * last_delay`` afterwards, raised to the message's age
    ``now - arrival`` when that is longer (Postfix ``qmgr_active.c``), then clamped
    to ``[minimal_backoff, maximal_backoff]``. A random jitter of 0-10 % of the base
    is added, so the returned delay lies in
    ``[minimal_backoff, maximal_backoff * 1.1]``.

    Args:
        now: current time, unix seconds.
        arrival: when the message was queued, unix seconds.
        last_delay: seconds of the previous backoff (``Retry.delay`` of the last
            call), or None on the first deferral.
        minimal_backoff: ``minimal_backoff_time``, seconds, >= 0.
        maximal_backoff: ``maximal_backoff_time``, seconds, >= ``minimal_backoff``.
        rng: source of the jitter; pass a seeded ``random.Random`` for
            reproducible schedules (tests). Defaults to a module-wide generator.

    Returns:
        Retry with ``at = now + delay``.

    Raises:
        ValueError: when a time is not finite, a backoff or ``last_delay`` is
            negative, or ``minimal_backoff > maximal_backoff``.
    """
    for name, value in (
        ("now", now),
        ("arrival", arrival),
        ("minimal_backoff", minimal_backoff),
        ("maximal_backoff", maximal_backoff),
    ):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, not {value!r}")
    if minimal_backoff < 0:
        raise ValueError(f"minimal_backoff must be >= 0, not {minimal_backoff!r}")
    if minimal_backoff > maximal_backoff:
        raise ValueError(f"minimal_backoff ({minimal_backoff!r}) exceeds maximal_backoff ({maximal_backoff!r})")
    if last_delay is not None and not (math.isfinite(last_delay) and last_delay >= 0):
        raise ValueError(f"last_delay must be a finite number >= 0 or None, not {last_delay!r}")

    base = minimal_backoff if last_delay is None else 2.0 * last_delay
    # A clock stepped backwards gives a negative age; max() makes it harmless.
    base = max(base, now - arrival)
    base = min(max(base, minimal_backoff), maximal_backoff)
    jitter = (rng if rng is not None else _DEFAULT_RNG).uniform(0.0, JITTER)
    # The clamp only guards against float rounding at the edges.
    delay = min(max(base * (1.0 + jitter), minimal_backoff), maximal_backoff * (1.0 + JITTER))
    return Retry(at=now + delay, delay=delay)


def is_expired(now: float, arrival: float, lifetime: float) -> bool:
    """True when a deferred message has been queued for ``lifetime`` or longer.

    Postfix ``maximal_queue_lifetime`` / ``bounce_queue_lifetime`` semantics: the
    age is ``now - arrival``; a lifetime of 0 means a single delivery attempt, so
    the message is expired after its first deferral whatever the clock says.

    Args:
        now: current time, unix seconds.
        arrival: when the message was queued, unix seconds.
        lifetime: queue lifetime, seconds, >= 0.

    Raises:
        ValueError: when ``lifetime`` is negative or a value is not a number.
    """
    if math.isnan(now) or math.isnan(arrival) or math.isnan(lifetime):
        raise ValueError("now, arrival and lifetime must be numbers, not NaN")
    if lifetime < 0:
        raise ValueError(f"lifetime must be >= 0, not {lifetime!r}")
    if lifetime == 0:
        return True
    return now - arrival >= lifetime
