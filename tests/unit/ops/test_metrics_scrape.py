"""The queue gauges read from a real spool, and /metrics rendered off the event loop.

The HTTP side is the real aiohttp listener on 127.0.0.1 (port 0), scraped over a socket.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway import metrics
from gateway.ops import queue_metrics
from gateway.ops.health import HealthCheck
from gateway.ops.http_server import MetricsServer
from gateway.spool import QueueState, Spool, new_queue_id
from tests.harness.spool_helpers import MESSAGE, NOW, make_entry


def gauges(collector: queue_metrics.SpoolCollector) -> dict[tuple[str, str], float]:
    """{(sample name, state label or ""): value} of one collect()."""
    return {
        (sample.name, sample.labels.get("state", "")): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    result = Spool(tmp_path / "spool")
    result.create()
    return result


def test_empty_spool(spool: Spool) -> None:
    values = gauges(queue_metrics.SpoolCollector(spool, clock=lambda: NOW))
    assert {state.value: values[("gateway_queue_messages", state.value)] for state in QueueState} == {
        state.value: 0 for state in QueueState
    }
    assert values[("gateway_queue_oldest_message_age_seconds", "")] == 0.0
    assert values[("gateway_spool_bytes", "")] == 0


def test_counts_oldest_age_and_bytes(spool: Spool) -> None:
    spool.commit(make_entry(new_queue_id(NOW - 100)), MESSAGE, QueueState.DEFERRED)
    spool.commit(make_entry(new_queue_id(NOW - 20)), MESSAGE, QueueState.DEFERRED)
    spool.commit(make_entry(new_queue_id(NOW - 50)), MESSAGE + b"longer\r\n")
    spool.commit(make_entry(new_queue_id(NOW - 10)), MESSAGE, QueueState.HOLD)
    spool.commit(make_entry(new_queue_id(NOW - 1000)), MESSAGE, QueueState.CORRUPT)  # no age: never delivered
    (spool.state_dir(QueueState.DEFERRED) / "notes.json").write_text("{}")  # not a record: not counted
    values = gauges(queue_metrics.SpoolCollector(spool, clock=lambda: NOW))
    assert {state.value: values[("gateway_queue_messages", state.value)] for state in QueueState} == {
        "incoming": 1,
        "active": 0,
        "deferred": 2,
        "hold": 1,
        "corrupt": 1,
    }
    assert values[("gateway_queue_oldest_message_age_seconds", "")] == pytest.approx(100.0, abs=1e-3)
    assert values[("gateway_spool_bytes", "")] == 5 * len(MESSAGE) + len(b"longer\r\n")


class _WaitsForTheLoop(Collector):
    """A collector that only finishes once the event loop has run a callback during the scrape:
    rendered on the loop's own thread it would wait in vain (and the test fails)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.loop_ran = threading.Event()
        self.thread: int | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # what the registry reads at register() (else it would call collect() there)
        yield GaugeMetricFamily("test_loop_ran_during_scrape", "1 when the loop ran meanwhile")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.thread = threading.get_ident()
        self.started.set()
        ran = self.loop_ran.wait(10)
        yield GaugeMetricFamily("test_loop_ran_during_scrape", "1 when the loop ran meanwhile", value=float(ran))


def test_metrics_are_rendered_off_the_event_loop() -> None:
    async def scenario() -> tuple[str, int, int | None]:
        async def healthy() -> list[HealthCheck]:
            return []

        server = MetricsServer("127.0.0.1", 0, health=healthy)
        await server.start()
        collector = _WaitsForTheLoop()
        metrics.REGISTRY.register(collector)
        try:
            async with aiohttp.ClientSession() as client:
                scrape = asyncio.ensure_future(client.get(f"http://127.0.0.1:{server.bound_port}/metrics"))
                # the loop serves meanwhile (the SMTP sessions would be served here)
                assert await asyncio.to_thread(collector.started.wait, 10)
                collector.loop_ran.set()
                async with await scrape as answer:
                    return await answer.text(), threading.get_ident(), collector.thread
        finally:
            metrics.REGISTRY.unregister(collector)
            await server.stop()

    text, loop_thread, collect_thread = asyncio.run(asyncio.wait_for(scenario(), 30))
    values = {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}
    assert values["test_loop_ran_during_scrape"] == 1.0
    assert collect_thread is not None and collect_thread != loop_thread
    assert "gateway_spool_commit_duration_seconds_count" in values  # the gateway's own metrics are there too
