"""The replicas extra: three gateways behind haproxy against one gateway, same machine, same load.

Three set-ups, one run each, each with a fresh sink: one gateway as in the
rounds (smtp-source talks to it directly); the same gateway behind haproxy (TCP
mode, ``send-proxy-v2``, ``option smtpchk`` every 2 s: what the balancer
costs); three such gateways behind that haproxy, each with its own spool and
the single instance's settings (``workers`` included), all relaying to one
sink. haproxy (Debian, started by ``tests/harness/haproxy.py``) balances the
20 smtp-source sessions round-robin; its CPU counts with the gateways'.
Figures: accept and end-to-end msg/s, CPU seconds per 1000 messages, and the
ratio of each set-up's end-to-end rate to the single instance's.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import HOST, SESSIONS, log
from bench.load import RunResult, measure
from bench.measure import MemorySampler
from bench.runs import Bench, failure
from bench.systems import GatewaySystem, System
from tests.harness.haproxy import HaproxyServer

SETUPS = (
    ("one gateway", 1, False),
    ("one gateway behind haproxy", 1, True),
    ("three gateways behind haproxy", 3, True),
)  # label, gateways, behind haproxy
PROXY_SETTINGS = 'upstream_proxy_networks = ["127.0.0.1/32"]\n'  # haproxy connects from 127.0.0.1
PROXY_LISTENER = 'upstream_proxy_protocol = "haproxy"\n'


class BalancedGateways(System):
    """Gateways (not started) behind one haproxy that :meth:`start` starts last; ``port`` is haproxy's.

    Args:
        gateways: each with ``upstream_proxy_protocol = "haproxy"`` on its listener.
        workdir: the run's directory; sink_port: where the gateways relay (for the record).

    Raises:
        RuntimeError: from :meth:`start`, when a gateway does not start.
        AssertionError: from :meth:`start`, when haproxy does not listen or a server is not UP within 30 s.
    """

    name = "gateway"

    def __init__(self, gateways: list[GatewaySystem], workdir: Path, sink_port: int) -> None:
        super().__init__(workdir, sink_port)
        self.gateways = gateways
        self.label = f"{len(gateways)} gateway(s) behind haproxy"
        self.balancer: HaproxyServer | None = None

    def start(self) -> None:
        try:
            for gateway in self.gateways:
                gateway.start()
            servers = [(HOST, gateway.port) for gateway in self.gateways]
            self.balancer = HaproxyServer(
                {"bench": (servers, "send-proxy-v2")}, health_check="smtpchk EHLO lb.bench", max_connections=1000
            )
            self.balancer.start()
            self.balancer.wait_for_states("bench", {f"s{index}": "UP" for index in range(len(servers))})
        except BaseException:
            self.stop()
            raise
        self.port = self.balancer.ports["bench"]

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
            shutil.rmtree(self.balancer.folder, ignore_errors=True)
            self.balancer = None
        for gateway in self.gateways:
            with contextlib.suppress(Exception):
                gateway.stop()

    def root_pids(self) -> list[int]:
        pids = [pid for gateway in self.gateways for pid in gateway.root_pids()]
        process = self.balancer.process if self.balancer else None
        return pids + ([process.pid] if process is not None and process.poll() is None else [])

    def queued(self) -> int:
        return sum(gateway.queued() for gateway in self.gateways)

    def deferred(self) -> int:
        return sum(gateway.deferred() for gateway in self.gateways)

    def peak_memory_kib(self, sampler: MemorySampler) -> int:
        return sampler.peak_pss_kib  # several processes: the PSS sum, as for Postfix

    def accepted_per_gateway(self) -> list[int]:
        """Messages each gateway queued (its ``result=queued`` log lines), in order."""
        return [len(re.findall(r"result=queued", gateway.log_text())) for gateway in self.gateways]


def replicas_extra(bench: Bench) -> None:
    """Run the three set-ups (``bench.args.small_messages`` each) into ``bench.extras["replicas"]``."""
    messages = bench.args.small_messages
    log(f"replicas: {messages} messages, {SESSIONS} sessions: one gateway, one behind haproxy, three behind haproxy")
    runs: list[dict[str, Any]] = []
    for label, count, balanced in SETUPS:
        result = RunResult(system="gateway", variant="replicas", round=1, position=1, messages=messages)
        per_gateway: list[int] = []
        with bench.workspace(f"replicas-{count}{'-haproxy' if balanced else ''}") as (workdir, sink):
            try:
                system: System
                if balanced:
                    gateways = [
                        bench.make_system(
                            "gateway",
                            "plain",
                            sink.port,
                            workdir / f"replica{index}",
                            gateway_extra=PROXY_SETTINGS,
                            listener_extra=PROXY_LISTENER,
                        )
                        for index in range(count)
                    ]
                    system = BalancedGateways([g for g in gateways if isinstance(g, GatewaySystem)], workdir, sink.port)
                else:
                    system = bench.make_system("gateway", "plain", sink.port, workdir)
                with bench.running(system):
                    time.sleep(bench.args.settle)
                    measure(system, sink, result)
                    if isinstance(system, BalancedGateways):
                        per_gateway = system.accepted_per_gateway()
            except Exception as error:  # one failed run must not lose the others
                result.error += f" {failure(error)}"
        log(
            f"  {label:30}: accept {result.accept_rate:6.0f}, end-to-end {result.e2e_rate:6.0f} msg/s, "
            f"CPU {result.cpu_per_1000:.2f} s/1000, per gateway {per_gateway or '-'}"
            + (f"  ERROR:{result.error}" if result.error else "")
        )
        runs.append(
            asdict(result) | {"label": label, "gateways": count, "haproxy": balanced, "per_gateway": per_gateway}
        )
    bench.extras["replicas"] = {"messages": messages, "workers": str(bench.args.workers), "runs": runs}


def replicas_report(extras: dict[str, Any], lines: list[str]) -> None:
    """The report's section of the replicas extra (nothing when it did not run)."""
    replicas = extras.get("replicas")
    if not replicas:
        return
    add = lines.append
    add(f"## Three replicas behind haproxy ({replicas['messages']} messages per run)")
    add("")
    add(
        f"The plain workload ({SESSIONS} smtp-source sessions) against one gateway, against the same gateway behind "
        "haproxy (TCP mode, `send-proxy-v2`, `option smtpchk` every 2 s; the gateway's listener takes the PROXY "
        "header), and against three such gateways behind that haproxy, each with its own spool and the single "
        f"gateway's settings (`workers = {replicas.get('workers', '?')}` each), all relaying to one sink; haproxy "
        "shares the sessions out "
        "round-robin. One run each, fresh instances. All of it runs on this one machine: the three replicas share "
        "its cores, so the ratio shows what the balancer and the extra processes cost here, not what three "
        "machines would give. CPU includes haproxy's."
    )
    add("")
    add(
        "| set-up | accept msg/s | end-to-end msg/s | CPU s per 1000 msg | messages per gateway | "
        "end-to-end vs one gateway |"
    )
    add("|---|---|---|---|---|---|")
    base = next((r["e2e_rate"] for r in replicas["runs"] if r["gateways"] == 1 and not r["haproxy"]), 0.0)
    for r in replicas["runs"]:
        ratio = f"{r['e2e_rate'] / base:.2f}" if base and r["e2e_rate"] else "–"
        spread = " / ".join(str(n) for n in r["per_gateway"]) if r["per_gateway"] else "–"
        add(
            f"| {r['label']} | {r['accept_rate']:.0f} | {r['e2e_rate']:.0f} | {r['cpu_per_1000']:.2f} | {spread} | "
            f"{ratio} |" + (f" {r['error'].strip()}" if r["error"] else "")
        )
    add("")
