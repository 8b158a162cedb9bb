#!/usr/bin/env python3
"""`make bench`: the gateway and Postfix side by side, same machine, same run, same workload.

Workload (Postfix's own load tools): ``smtp-source`` sends N messages of about
2 KB (``-l 2048`` plus its From/To/Date/Message-Id header), one recipient each,
over 20 concurrent reused sessions (``-s 20 -d``), to the system under test on
127.0.0.1. The system queues each message durably (250 only after fsync, as
each does by default) and relays it to ``smtp-sink`` on 127.0.0.1, which counts
what it receives.

Systems:

* the gateway: ``python -m gateway run`` from a TOML config (listener without
  TLS, mynetworks loopback, relayhost the sink, spool in a temp dir);
* Postfix: a private instance (``postfix -c DIR``) with its own main.cf,
  master.cf (nothing chrooted), queue and data directories under a temp dir,
  ``inet_interfaces`` 127.0.0.1, ``mynetworks`` loopback, ``relayhost`` the
  sink. A system Postfix, if any, is never touched.

Figures per system and round: accept msg/s (N / smtp-source wall time),
end-to-end msg/s (N / time until the sink has all N), CPU seconds per 1000
messages (the whole process tree: live processes plus reaped children, from
psutil, between an idle moment before the load and the moment the queue is
empty again), peak memory (gateway: peak RSS, VmHWM; Postfix: peak of the sum
of PSS over its processes, sampled from /proc/PID/smaps_rollup).

Variants: ``plain``; ``dkim`` (gateway signing RSA-2048; Postfix stays plain,
the target is "gateway with DKIM >= 0.9x Postfix plain"); ``amavis`` (gateway
with clamd + spamd, the test harness's daemons, against Postfix with a private
amavisd-new as its content_filter, using the same clamd and SpamAssassin
in-process, configured as spamd is); ``rspamd`` (gateway with its rspamd policy
against Postfix with rspamd's proxy worker as milter, one rspamd for both);
``scan`` (not by default: the gateway with clamd + spamd against plain
Postfix). The filters' own CPU and memory are shown apart. Rounds alternate the order
(gateway first in odd rounds, Postfix first in even ones); each round starts
fresh instances, spools and sinks.

Extras: the peak memory of one 50 MB message; delivery after a full sink
outage (the sink answers 4xx to every RCPT while the messages arrive, then a
normal sink comes back on the same port); a profile of the gateway (py-spy
sampling and an strace syscall count of both systems) on a separate, smaller
run that is not part of the figures; three gateway replicas behind haproxy
against one gateway (bench/replicas.py); deliveries repeated after SIGKILL,
the gateway and Postfix under the same crash harness (bench/crash.py).

Results go to ``docs/benchmarks.md`` (and the raw numbers to
``bench/last-run.json``). Every wait is bounded; only processes this script
started are stopped, by their PID (Postfix by ``postfix -c DIR stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench.common import DEFAULT_VARIANTS, POSTCONF, POSTFIX, ROOT, SMTP_SINK, SMTP_SOURCE, VARIANTS, log
from bench.crash import crash_extra
from bench.filters import AMAVISD
from bench.load import RunResult
from bench.profiles import profiles_dir, summarise_py_spy
from bench.replicas import replicas_extra
from bench.report import machine, report
from bench.runs import Bench
from tests.harness.haproxy import HAPROXY


def check_tools(variants: list[str], extras: list[str]) -> None:
    tools = [SMTP_SOURCE, SMTP_SINK, POSTFIX, POSTCONF]
    tools += [HAPROXY] if "replicas" in extras else []
    tools += [AMAVISD] if "amavis" in variants else []
    tools += [Path("/usr/bin/rspamd")] if "rspamd" in variants else []
    missing = [str(p) for p in tools if not p.exists()]
    if missing:
        sys.exit(
            f"missing {', '.join(missing)}: run `bash bench/install.sh` (Debian packages postfix, "
            "amavisd-new, rspamd, haproxy)"
        )
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root: a private Postfix instance runs its daemons as user postfix")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=None, help="N per run (default 20000; --quick: 300)")
    parser.add_argument(
        "--scan-messages",
        type=int,
        default=None,
        help="N per run of the scan, amavis and rspamd variants (default N/20: the scanners are the bottleneck)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per variant (default 3)")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma list of {', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--extras",
        default="sessions,whatif,big,outage,profile,replicas,crash",
        help="comma list of sessions, whatif, big, outage, profile, replicas, crash ('' for none)",
    )
    parser.add_argument(
        "--small-messages",
        type=int,
        default=None,
        help="N of the sessions, what-if and replicas runs (default N/8, at most 3000)",
    )
    parser.add_argument("--big-message-mb", type=int, default=50)
    parser.add_argument("--outage-messages", type=int, default=None, help="default N/4, at most 5000")
    parser.add_argument("--profile-messages", type=int, default=None, help="default N/4, at most 5000")
    parser.add_argument(
        "--spamd-children",
        type=int,
        default=4,
        help="spamd's --max-children, and amavisd-new's $max_servers in the amavis variant",
    )
    parser.add_argument(
        "--rspamd-workers",
        type=int,
        default=2,
        help="rspamd's normal workers (the gateway's) and milter proxy workers (Postfix's)",
    )
    parser.add_argument("--workers", default="auto", help='the gateway\'s `workers` (default "auto": one per CPU)')
    parser.add_argument(
        "--event-loop",
        default="uvloop",
        choices=("uvloop", "asyncio"),
        help="the gateway's `event_loop` (the asyncio variant always uses asyncio's own)",
    )
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of idle after each start")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (300 messages, 1 round)")
    parser.add_argument(
        "--output",
        default=None,
        help="the Markdown report (default docs/benchmarks.md; --quick: bench/quick-report.md)",
    )
    parser.add_argument("--json", default=None, help="raw results (default bench/last-run.json)")
    parser.add_argument("--workdir", default=None, help="where instances live (default a new /tmp/mailbench.*)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, spools)")
    parser.add_argument(
        "--report-only",
        metavar="JSON",
        default=None,
        help="only rewrite the report from the raw results of an earlier run (e.g. bench/last-run.json)",
    )
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 300 if args.quick else 20000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.scan_messages is None:
        args.scan_messages = max(50, args.messages // 20)
    if args.outage_messages is None:
        args.outage_messages = min(5000, max(50, args.messages // 4))
    if args.small_messages is None:
        args.small_messages = min(3000, max(100, args.messages // 8))
    if args.profile_messages is None:
        args.profile_messages = min(5000, max(100, args.messages // 4))
    if args.quick:
        args.big_message_mb = min(args.big_message_mb, 50)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    args.extras = [e for e in args.extras.split(",") if e]
    if args.output is None:
        args.output = str(ROOT / ("bench/quick-report.md" if args.quick else "docs/benchmarks.md"))
    if args.json is None:
        args.json = str(ROOT / ("bench/quick-run.json" if args.quick else "bench/last-run.json"))
    return args


def report_only(args: argparse.Namespace) -> int:
    """Rewrite the report from a JSON of an earlier run (older profile summaries redone from its -profiles/ dir)."""
    data = json.loads(Path(args.report_only).read_text())
    saved = data.get("args", {})
    for key in (
        "messages",
        "scan_messages",
        "rounds",
        "variants",
        "extras",
        "spamd_children",
        "rspamd_workers",
        "big_message_mb",
        "outage_messages",
        "profile_messages",
        "small_messages",
        "workers",
        "event_loop",
    ):
        if key in saved:
            setattr(args, key, saved[key])
    bench = Bench.__new__(Bench)
    bench.args = args
    fields_ = {f for f in RunResult.__dataclass_fields__}
    bench.results = [RunResult(**{k: v for k, v in r.items() if k in fields_}) for r in data["runs"]]
    bench.extras = data.get("extras", {})
    spies = (bench.extras.get("profile") or {}).get("py_spy") or {}
    for name, spy in spies.items():
        # summaries made by an older bench/run.py lack newer fields: summarise the kept raw stacks again
        variant, _, kind = name.partition("-")
        gil = bool((spy.get("run") or {}).get("gil"))
        raw = profiles_dir(args.report_only) / f"{variant}{'-gil' if gil else '-all-threads'}.collapsed.txt"
        if "patterns" not in spy and raw.exists() and not spy.get("error"):
            spies[name] = summarise_py_spy(raw.read_text(errors="replace")) | {"run": spy.get("run", {})}
    info = data["machine"]
    finished = data.get("finished") or time.time()
    started = finished - 60 * (data.get("minutes") or 0)
    text = report(bench, info, started, argv=data.get("argv", []), finished=finished)
    Path(args.output).write_text(text)
    log(f"report rewritten from {args.report_only} to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args)
    check_tools(args.variants, args.extras)
    started = time.time()
    info = machine()
    bench = Bench(args)
    log(
        f"work directory {bench.workdir}; N={args.messages}, rounds={args.rounds}, variants={args.variants}, "
        f"extras={args.extras}"
    )

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for variant in args.variants:
            bench.variant_rounds(variant)
        extras = {
            "sessions": bench.sessions,
            "whatif": bench.whatif,
            "big": bench.big_message,
            "outage": bench.outage,
            "profile": bench.profile,
            "replicas": lambda: replicas_extra(bench),
            "crash": lambda: crash_extra(bench),
        }
        for name, run_extra in extras.items():
            if name not in args.extras:
                continue
            try:
                run_extra()
            except Exception:  # a failed extra must not lose the rounds measured before it
                traceback.print_exc()
                bench.extras.setdefault("failed", []).append(name)
    finally:
        bench.close()
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "machine": info,
                "args": {k: v for k, v in vars(args).items()},
                "argv": sys.argv[1:],
                "minutes": (time.time() - started) / 60,
                "finished": time.time(),
                "runs": [asdict(r) for r in bench.results],
                "extras": bench.extras,
            },
            indent=1,
            default=str,
        )
    )
    text = report(bench, info, started)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    log(f"report written to {args.output}, raw results to {args.json}")
    print(text)
    return 1 if any(r.error for r in bench.results) else 0


if __name__ == "__main__":
    sys.exit(main())
