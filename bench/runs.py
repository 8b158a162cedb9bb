"""The runs of a benchmark: variants in alternating rounds, and the extras.

The extras: sessions, what-if, 50 MB, outage, profile.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import BODY_BYTES, FILTER_VARIANTS, SCAN_VARIANTS, SESSIONS, free_port, log, stop_pid, wait_until
from bench.filters import FilterDaemons
from bench.load import RunResult, measure, smtp_source
from bench.measure import MemorySampler, tree, tree_cpu
from bench.profiles import find_py_spy, profiles_dir, summarise_py_spy, summarise_strace
from bench.systems import GatewaySystem, PostfixSystem, Scanners, Sink, System, WhatIf


def failure(error: Exception) -> str:
    """Print the traceback of a failed measurement and return its one-line summary: one failed run
    must not lose the others."""
    traceback.print_exc()
    return f"{type(error).__name__}: {error}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mailbench.", dir="/tmp"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.dkim_keys = self.workdir / "dkim-keys"
        self.results: list[RunResult] = []
        self.extras: dict[str, Any] = {}
        self.scanners: Scanners | None = None
        self.filters: FilterDaemons | None = None  # the amavis and rspamd variants' daemons, both sides
        self.started: list[System] = []
        self.counter = 0

    def fresh_dir(self, name: str) -> Path:
        # Every run starts from the same state: what earlier runs left dirty (queue files, their
        # deletion) is written back first, so a run does not pay for its predecessor's writeback.
        os.sync()
        time.sleep(self.args.settle)
        self.counter += 1
        path = self.workdir / f"{self.counter:03d}-{name}"
        path.mkdir()
        path.chmod(0o755)
        return path

    def make_system(
        self,
        kind: str,
        variant: str,
        sink_port: int,
        workdir: Path,
        gateway_extra: str = "",
        postfix_extra: dict[str, str] | None = None,
        whatif: WhatIf | None = None,
        listener_extra: str = "",
    ) -> System:
        if kind == "postfix":
            master_extra = ""
            if variant in FILTER_VARIANTS and self.filters:
                filter_main, master_extra = self.filters.postfix_settings()
                postfix_extra = {**filter_main, **(postfix_extra or {})}
            return PostfixSystem(workdir, sink_port, postfix_extra, master_extra)
        scanners = self.scanners.addresses() if (variant == "scan" and self.scanners) else None
        if variant in FILTER_VARIANTS and self.filters:
            scanners = self.filters.gateway_addresses()
        # a what-if patches the one process bench/whatif_gateway.py runs: its workers would be plain gateways
        one = variant == "one-worker" or whatif is not None
        workers = "1" if one else str(getattr(self.args, "workers", "auto"))
        event_loop = "asyncio" if variant == "asyncio" else getattr(self.args, "event_loop", "uvloop")
        workers_value = workers if workers.isdigit() else f'"{workers}"'
        settings = f'workers = {workers_value}\nevent_loop = "{event_loop}"\n'
        return GatewaySystem(
            workdir,
            sink_port,
            variant=variant,
            dkim_keys=self.dkim_keys,
            scanners=scanners,
            extra=settings + gateway_extra,
            whatif=whatif,
            listener_extra=listener_extra,
        )

    @contextlib.contextmanager
    def workspace(self, name: str) -> Iterator[tuple[Path, Sink]]:
        """A fresh work directory with a started smtp-sink for one measurement; both go afterwards
        (the directory stays with ``--keep``)."""
        workdir = self.fresh_dir(name)
        sink = Sink(workdir, free_port()).start()
        try:
            yield workdir, sink
        finally:
            sink.stop()
            if not self.args.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    @contextlib.contextmanager
    def running(self, system: System) -> Iterator[System]:
        system.start()
        self.started.append(system)
        try:
            yield system
        finally:
            system.stop()
            self.started.remove(system)

    def one_run(self, kind: str, variant: str, round_no: int, position: int, messages: int) -> RunResult:
        result = RunResult(system=kind, variant=variant, round=round_no, position=position, messages=messages)
        with self.workspace(f"{variant}-{kind}-r{round_no}") as (workdir, sink):
            try:
                system = self.make_system(kind, variant, sink.port, workdir)
                with self.running(system):
                    time.sleep(self.args.settle)  # let start-up work (key loading, process spawning) finish
                    scanners = None
                    if variant == "scan" and kind == "gateway" and self.scanners:
                        scanners = self.scanners.named_pids
                    filters = self.filters if variant in FILTER_VARIANTS else None
                    if filters:
                        scanners = lambda: filters.named_pids(kind)  # noqa: E731 - kind is this run's
                        filtered0 = filters.filtered(kind)
                    measure(system, sink, result, scanners=scanners)
                    if filters:
                        self.count_filtered(filters, kind, result, filtered0)
            except Exception as error:  # one failed run must not lose the others
                result.error += f" {failure(error)}"
        log(
            f"  {variant:5} round {round_no} {kind:7}: accept {result.accept_rate:7.1f} msg/s, "
            f"end-to-end {result.e2e_rate:7.1f} msg/s, CPU {result.cpu_per_1000:6.2f} s/1000, "
            f"mem {result.peak_memory_mb:6.1f} MB, cores {result.cores_busy:4.2f}"
            + (f", scanners {result.scanner_cpu_per_1000:.2f} s/1000" if result.scanner_cpu_seconds else "")
            + (f"  ERROR:{result.error}" if result.error else "")
        )
        return result

    @staticmethod
    def count_filtered(filters: FilterDaemons, kind: str, result: RunResult, before: int) -> None:
        """How many messages of this run went through the filter: Postfix's amavisd ("Passed" log
        lines) or rspamd (its scanned counter); the gateway's scans from its own histogram."""
        if kind == "gateway" and filters.variant == "amavis":
            result.filtered = int(
                sum(
                    v
                    for k, v in result.metrics.items()
                    if k.startswith("gateway_scan_duration_seconds_count") and "spamassassin" in k
                )
            )
        else:
            # amavisd logs after it has forwarded; the sink can have a message a moment before that
            wait_until(lambda: filters.filtered(kind) - before >= result.messages, 10, 0.2)
            result.filtered = filters.filtered(kind) - before if before >= 0 else -1
        if 0 <= result.filtered < result.messages:
            result.error += f" only {result.filtered}/{result.messages} went through the filter"

    def variant_rounds(self, variant: str) -> None:
        messages = self.args.scan_messages if variant in SCAN_VARIANTS else self.args.messages
        log(f"variant {variant}: {self.args.rounds} rounds of {messages} messages")
        if variant == "scan":
            self.scanners = Scanners(self.args.spamd_children)
            self.scanners.start()
            self.extras["scanner_versions"] = self.scanners.versions()
        if variant in FILTER_VARIANTS:
            self.filters = FilterDaemons(
                variant, self.workdir, self.args.spamd_children, getattr(self.args, "rspamd_workers", 2)
            )
            try:
                self.filters.start()
            except Exception:
                self.filters.close()
                self.filters = None
                raise
            self.extras.setdefault("filter_versions", {}).update(self.filters.versions())
            self.extras.setdefault("filter_settings", {})[variant] = self.filters.settings()
        try:
            for round_no in range(1, self.args.rounds + 1):
                order = ["gateway", "postfix"] if round_no % 2 else ["postfix", "gateway"]
                for position, kind in enumerate(order, 1):
                    self.results.append(self.one_run(kind, variant, round_no, position, messages))
        finally:
            if self.scanners:
                self.scanners.close()
                self.scanners = None
            if self.filters:
                self.filters.close()
                self.filters = None

    # ---- extras

    def small_run(
        self,
        kind: str,
        messages: int,
        *,
        sessions: int = SESSIONS,
        whatif: WhatIf | None = None,
        gateway_extra: str = "",
        label: str = "",
    ) -> RunResult:
        """One plain run outside the rounds (fresh instance and sink); errors are recorded, not raised."""
        result = RunResult(system=kind, variant=label or "small", round=1, position=1, messages=messages)
        with self.workspace(f"{label or 'small'}-{kind}") as (workdir, sink):
            try:
                system = self.make_system(kind, "plain", sink.port, workdir, gateway_extra=gateway_extra, whatif=whatif)
                with self.running(system):
                    time.sleep(self.args.settle)
                    measure(system, sink, result, sessions=sessions)
            except Exception as error:
                result.error += f" {failure(error)}"
        return result

    def sessions(self) -> None:
        """Does throughput grow with concurrent sessions? (1, 5, 20, 50; both systems)."""
        messages = self.args.small_messages
        log(f"sessions: {messages} messages with 1, 5, 20 and 50 concurrent sessions, each system")
        out: dict[str, Any] = {"messages": messages, "runs": []}
        for sessions in (1, 5, 20, 50):
            for kind in ("gateway", "postfix"):
                result = self.small_run(kind, messages, sessions=sessions, label=f"sessions{sessions}")
                log(
                    f"  {kind:7} {sessions:2} sessions: accept {result.accept_rate:6.0f}, end-to-end "
                    f"{result.e2e_rate:6.0f} msg/s, CPU {result.cpu_per_1000:.2f} s/1000, "
                    f"loop thread {result.loop_thread_busy:.2f}{'  ERROR:' + result.error if result.error else ''}"
                )
                out["runs"].append(asdict(result) | {"sessions": sessions})
        self.extras["sessions"] = out

    WHATIFS = [  # label, the gateway's change (None: as it is), extra config, what it shows
        ("as measured", None, "", "the gateway as it is (first of two runs)"),
        (
            "log_level = warning",
            None,
            'log_level = "warning"\n',
            "the per-message info lines (connect, queued, sent, removed, disconnect) not written",
        ),
        (
            "16 spool threads",
            WhatIf(spool_threads=16),
            "",
            "the spool's own thread pool with 16 threads instead of gateway.spool.threads.SPOOL_THREADS",
        ),
        (
            "no fsync (NOT durable)",
            WhatIf(fsync=False),
            "",
            "os.fsync patched out: what the fsyncs cost (their count per message: see the strace table)",
        ),
        ("no fsync + warning log", WhatIf(fsync=False), 'log_level = "warning"\n', "both: what is left is Python work"),
        (
            "one commit batch in flight",
            WhatIf(commit_batches=1),
            "",
            "group commits one batch at a time instead of gateway.spool.batcher.COMMIT_BATCHES_IN_FLIGHT",
        ),
        ("as measured, again", None, "", "the gateway as it is (second run: the spread shows the noise)"),
    ]

    def whatif(self) -> None:
        """The gateway with one cost removed at a time (bench/whatif_gateway.py patches; never durable figures)."""
        messages = self.args.small_messages
        log(f"what-if: {messages} messages, {SESSIONS} sessions, the gateway with one cost removed at a time")
        out: dict[str, Any] = {"messages": messages, "runs": []}
        for label, change, extra, meaning in self.WHATIFS:
            result = self.small_run("gateway", messages, whatif=change, gateway_extra=extra, label="whatif")
            log(
                f"  {label:24}: end-to-end {result.e2e_rate:6.0f} msg/s, CPU {result.cpu_per_1000:.2f} s/1000, "
                f"loop thread {result.loop_thread_busy:.2f}{'  ERROR:' + result.error if result.error else ''}"
            )
            out["runs"].append(asdict(result) | {"label": label, "meaning": meaning})
        self.extras["whatif"] = out

    def big_message(self) -> None:
        size = self.args.big_message_mb * 1024 * 1024
        log(f"one {self.args.big_message_mb} MB message, each system")
        out: dict[str, Any] = {"bytes": size}
        for kind in ("gateway", "postfix"):
            entry: dict[str, Any] = {}
            with self.workspace(f"big-{kind}") as (workdir, sink):
                try:
                    system = self.make_system(
                        kind,
                        "plain",
                        sink.port,
                        workdir,
                        gateway_extra=f'message_size_limit = "{size + 10 * 1024 * 1024}"\n',
                        postfix_extra={"message_size_limit": str(size + 10 * 1024 * 1024)},
                    )
                    with self.running(system):
                        time.sleep(self.args.settle)
                        idle = MemorySampler(system.root_pids)
                        idle.sample()
                        entry["idle_mb"] = (idle.peak_rss_kib if kind == "gateway" else idle.peak_pss_kib) / 1024
                        result = RunResult(system=kind, variant="big", round=1, position=1, messages=1)
                        measure(system, sink, result, body_bytes=size, sessions=1, sample_interval=0.02)
                        entry.update(
                            peak_mb=result.peak_memory_mb,
                            peak_pss_mb=result.peak_pss_mb,
                            accept_seconds=result.accept_seconds,
                            e2e_seconds=result.e2e_seconds,
                            cpu_seconds=result.cpu_seconds,
                            delivered=result.delivered,
                            error=result.error,
                        )
                except Exception as error:
                    entry["error"] = failure(error)
            log(f"  {kind}: {entry}")
            out[kind] = entry
        self.extras["big_message"] = out

    def outage(self) -> None:
        messages = self.args.outage_messages
        log(f"sink outage: {messages} messages while the sink answers 4xx to RCPT, then it comes back")
        timing = {"minimal_backoff_time": "10s", "maximal_backoff_time": "20s", "queue_run_delay": "5s"}
        out: dict[str, Any] = {"messages": messages, "settings": timing}
        for kind in ("gateway", "postfix"):
            workdir = self.fresh_dir(f"outage-{kind}")
            port = free_port()
            refusing = Sink(workdir, port, refuse="RCPT", name="refusing").start()
            sink: Sink | None = None
            entry: dict[str, Any] = {}
            try:
                system = self.make_system(
                    kind,
                    "plain",
                    port,
                    workdir,
                    gateway_extra="".join(f'{k} = "{v}"\n' for k, v in timing.items()),
                    postfix_extra=dict(timing),
                )
                with self.running(system):
                    time.sleep(self.args.settle)
                    cpu0 = tree_cpu(system.root_pids())
                    start = time.monotonic()
                    source = smtp_source(system.port, messages, SESSIONS, BODY_BYTES, 60 + messages / 5)
                    entry["accept_seconds"] = time.monotonic() - start
                    entry["accept_rate"] = messages / entry["accept_seconds"]
                    if source.returncode != 0:
                        entry["error"] = f"smtp-source: {source.stderr.decode(errors='replace')[-300:]}"
                    all_deferred = wait_until(lambda: system.deferred() >= messages, 120, 0.2)
                    entry["all_deferred_seconds"] = time.monotonic() - start
                    entry["deferred_reached"] = system.deferred()
                    if not all_deferred:
                        entry["error"] = entry.get("error", "") + f" only {system.deferred()} deferred"
                    refusing.stop()
                    sink = Sink(workdir, port, name="back").start()
                    back = time.monotonic()
                    first = wait_until(lambda: sink.count() >= 1, 60, 0.05)
                    entry["first_delivery_seconds"] = time.monotonic() - back if first else None
                    done = wait_until(lambda: sink.count() >= messages, 60 + messages / 5, 0.05)
                    entry["all_delivered_seconds"] = time.monotonic() - back
                    if not done:
                        entry["error"] = entry.get("error", "") + f" sink has {sink.count()}/{messages}"
                    wait_until(lambda: system.queued() == 0, 60, 0.1)
                    time.sleep(2)  # anything extra (a duplicate) would show up now
                    entry["delivered"] = sink.count()
                    entry["duplicates"] = max(0, sink.count() - messages)
                    entry["cpu_seconds"] = tree_cpu(system.root_pids()) - cpu0
                    if entry["first_delivery_seconds"] is not None and done:
                        burst = entry["all_delivered_seconds"] - entry["first_delivery_seconds"]
                        entry["drain_rate"] = messages / burst if burst > 0 else None
            except Exception as error:
                entry["error"] = failure(error)
            finally:
                refusing.stop()
                if sink:
                    sink.stop()
                if not self.args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
            log(f"  {kind}: {entry}")
            out[kind] = entry
        self.extras["outage"] = out

    def profile(self) -> None:
        """py-spy on the gateway (each variant) and strace -c on both systems, on separate smaller runs."""
        messages = self.args.profile_messages
        out: dict[str, Any] = {"messages": messages}
        py_spy = find_py_spy()
        strace = shutil.which("strace")
        log(f"profile: {messages} messages (py-spy: {py_spy or 'missing'}, strace: {strace or 'missing'})")
        if py_spy:
            spy: dict[str, Any] = {}
            counts = {"plain": messages, "dkim": max(100, messages // 2), "scan": min(self.args.scan_messages, 300)}
            # the amavis variant's gateway is the scan variant's
            profiled = list(dict.fromkeys("scan" if v == "amavis" else v for v in self.args.variants))
            for variant in [v for v in profiled if v in counts]:  # syncfs variants: as plain, dkim
                count = counts[variant]
                # scan: all threads, so that native frames under the scanner clients (ssl, sockets) show
                spy[variant] = self._profile_py_spy(py_spy, variant, count, gil=variant != "scan")
            spy["plain-wall"] = self._profile_py_spy(py_spy, "plain", messages, gil=False)
            out["py_spy"] = spy
        if strace:
            count = min(messages, 2000)
            out["strace"] = {kind: self._strace(strace, kind, count) for kind in ("gateway", "postfix")}
        self.extras["profile"] = out

    def _profile_py_spy(self, py_spy: str, variant: str, messages: int, *, gil: bool) -> dict[str, Any]:
        with self.workspace(f"profile-pyspy-{variant}") as (workdir, sink):
            return self._py_spy_run(py_spy, variant, messages, gil, workdir, sink)

    def _py_spy_run(
        self, py_spy: str, variant: str, messages: int, gil: bool, workdir: Path, sink: Sink
    ) -> dict[str, Any]:
        raw = workdir / "py-spy.txt"
        try:
            if variant == "scan":
                self.scanners = Scanners(self.args.spamd_children)
                self.scanners.start()
            system = self.make_system("gateway", variant, sink.port, workdir)
            with self.running(system):
                time.sleep(self.args.settle)
                command = [
                    py_spy,
                    "record",
                    "--pid",
                    str(system.root_pids()[0]),
                    "--subprocesses",
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ] + (["--gil"] if gil else [])
                spy = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                time.sleep(1)
                result = RunResult(system="gateway", variant="profile", round=1, position=1, messages=messages)
                measure(system, sink, result)
                stop_pid(spy, 30, signal.SIGINT)  # SIGINT: py-spy writes its samples
            summary = summarise_py_spy(raw.read_text(errors="replace")) if raw.exists() else {"error": "no output"}
            if raw.exists():  # kept for a closer look (speedscope, flamegraph.pl) next to the raw results
                keep = profiles_dir(self.args.json)
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, keep / f"{variant}{'-gil' if gil else '-all-threads'}.collapsed.txt")
            summary["run"] = {
                "messages": messages,
                "e2e_rate": result.e2e_rate,
                "cpu_per_1000": result.cpu_per_1000,
                "gil": gil,
            }
            log(f"  py-spy {variant}{' --gil' if gil else ''}: {summary.get('buckets', summary.get('error'))}")
            return summary
        except Exception as error:
            return {"error": failure(error)}
        finally:
            if self.scanners:
                self.scanners.close()
                self.scanners = None

    def _strace(self, strace: str, kind: str, messages: int) -> dict[str, Any]:
        with self.workspace(f"profile-strace-{kind}") as (workdir, sink):
            return self._strace_run(strace, kind, messages, workdir, sink)

    def _strace_run(self, strace: str, kind: str, messages: int, workdir: Path, sink: Sink) -> dict[str, Any]:
        summary_path = workdir / "strace.txt"
        try:
            system = self.make_system(kind, "plain", sink.port, workdir)
            with self.running(system):
                time.sleep(self.args.settle)
                pids = [p.pid for root in system.root_pids() for p in tree(root)]
                command = [strace, "-f", "-c", "-o", str(summary_path)]
                for pid in pids:
                    command += ["-p", str(pid)]
                tracer = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                time.sleep(1.5)
                result = RunResult(system=kind, variant="strace", round=1, position=1, messages=messages)
                measure(system, sink, result)
                stop_pid(tracer, 60, signal.SIGINT)  # SIGINT: strace writes its summary
            return summarise_strace(summary_path.read_text(errors="replace"), messages)
        except Exception as error:
            return {"error": failure(error)}

    def close(self) -> None:
        for system in list(self.started):
            with contextlib.suppress(Exception):
                system.stop()
        if self.scanners:
            self.scanners.close()
        if self.filters:
            self.filters.close()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
