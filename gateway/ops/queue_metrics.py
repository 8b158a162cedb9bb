"""The queue gauges, read from the spool's directories at scrape time (``gateway_queue_*``, ``gateway_spool_bytes``).

Here rather than in :mod:`gateway.metrics`, which every layer imports: the metric
definitions stay free of the spool, so a policy that counts something does not
import the spool with them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.metrics import PREFIX, REGISTRY
from gateway.spool import QueueState, Spool
from gateway.spool.queue_id import arrival_of, is_queue_id


class SpoolCollector(Collector):
    """Queue size by state, the oldest message's age and the spool's bytes, read at scrape time.

    One directory listing per state and one ``stat`` per message file: about 0.3 s for
    100,000 queued messages, which is why ``/metrics`` is rendered off the event loop.
    """

    def __init__(self, spool: Spool, clock: Callable[[], float] = time.time) -> None:
        self.spool = spool
        self.clock = clock  # Unix time in seconds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sizes = GaugeMetricFamily(f"{PREFIX}_queue_messages", "Messages in the queue, by state", labels=["state"])
        oldest: list[str] = []
        for state in QueueState:
            try:
                records = [
                    name
                    for name in os.listdir(self.spool.state_dir(state))
                    if name.endswith(".json") and is_queue_id(name[:-5])
                ]
            except FileNotFoundError:
                records = []
            sizes.add_metric([state.value], len(records))
            if records and state is not QueueState.CORRUPT:
                oldest.append(min(records))
        yield sizes
        # Queue IDs begin with the arrival time in hex microseconds, so the smallest name is the oldest.
        arrival = min((arrival_of(name[:-5]) for name in oldest), default=None)
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_message_age_seconds",
            "Age of the oldest queued message (0 when the queue is empty)",
            value=0.0 if arrival is None else max(0.0, self.clock() - arrival),
        )
        total = 0
        try:
            with os.scandir(self.spool.data_dir) as entries:
                for entry in entries:
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            pass
        yield GaugeMetricFamily(f"{PREFIX}_spool_bytes", "Bytes of queued message files", value=total)


_spool_collector: SpoolCollector | None = None


def watch_spool(spool: Spool) -> None:
    """Register the queue gauges for ``spool`` (once per process; a second call replaces the spool)."""
    global _spool_collector
    if _spool_collector is None:
        _spool_collector = SpoolCollector(spool)
        REGISTRY.register(_spool_collector)
    else:
        _spool_collector.spool = spool
