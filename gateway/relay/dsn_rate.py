"""How many DSNs one address gets about mail from untrusted clients: the backscatter limit.

A client that forges ``MAIL FROM:<victim@third-party>`` to recipients the next
hop refuses makes the gateway send DSNs to the victim. Recipient validation
(Postfix ``relay_recipient_maps``) removes most of this; what is left is
bounded here: at most :data:`DSN_COUNT` DSNs per :data:`DSN_PERIOD` seconds to
one address, about mail that came from untrusted clients (mail from trusted
clients always gets its DSNs). Kept in memory: a restart starts afresh, which
costs at most one more window's worth.
"""

from __future__ import annotations

from collections import deque

DSN_COUNT = 10
DSN_PERIOD = 3600.0  # seconds
_PRUNE_AT = 10000  # addresses remembered before old ones are dropped


class DsnRateLimit:
    """Counts DSNs per recipient address in a sliding window.

    Args:
        count: DSNs allowed per window and address.
        period: the window, seconds.
    """

    def __init__(self, count: int = DSN_COUNT, period: float = DSN_PERIOD) -> None:
        self.count = count
        self.period = period
        self._sent: dict[str, deque[float]] = {}

    def allow(self, address: str, now: float) -> bool:
        """Count a DSN to ``address`` (case-insensitive) at ``now`` (unix seconds); False when over the limit."""
        key = address.lower()
        times = self._sent.setdefault(key, deque())
        while times and times[0] <= now - self.period:
            times.popleft()
        if len(times) >= self.count:
            return False
        times.append(now)
        if len(self._sent) > _PRUNE_AT:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        for key in [k for k, times in self._sent.items() if not times or times[-1] <= now - self.period]:
            del self._sent[key]
