"""The report's section on the yardstick variants: the gateway's filters against the seed image's stack.

``amavis``: gateway + clamd + spamd against Postfix + amavisd-new (same clamd, SpamAssassin
in amavisd's processes); ``rspamd``: gateway + rspamd against Postfix + rspamd's milter (same
rspamd). Both pairs side by side, each filter daemon's CPU and memory apart from the MTA's.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bench.common import FILTER_VARIANTS

if TYPE_CHECKING:
    from bench.load import RunResult
    from bench.runs import Bench

POSTFIX_LABELS = {"amavis": "Postfix + amavisd-new", "rspamd": "Postfix + rspamd milter"}
GATEWAY_LABELS = {"amavis": "gateway + clamd + spamd", "rspamd": "gateway + rspamd"}
# the targets: gateway / Postfix end-to-end throughput, median of the per-round ratios
TARGETS = {
    "amavis": (1.5, "clamd + spamd: ≥ 1.5× Postfix + amavisd-new with the same daemons"),
    "rspamd": (1.0, "rspamd: ≥ 1.0× Postfix + rspamd milter"),
}
DAEMONS = {"amavis": ("clamd", "spamd", "amavisd"), "rspamd": ("rspamd",)}
DAEMON_TITLES = {
    "clamd": "clamd",
    "spamd": "spamd",
    "amavisd": "amavisd-new (SpamAssassin in-process)",
    "rspamd": "rspamd (whole process tree)",
}


def _base() -> Any:
    from bench import report  # here: bench.report imports this module

    return report


def _values(runs: list[RunResult], system: str, get: Any) -> list[float]:
    return [get(r) for r in runs if r.system == system and not r.error]


def target_ratio(results: list[RunResult], variant: str) -> tuple[float | None, int]:
    """(median of the per-round gateway/Postfix end-to-end ratios, how many rounds) of ``variant``."""
    base = _base()
    ratios = [g.e2e_rate / p.e2e_rate for g, p in base.paired(results, variant) if p.e2e_rate]
    return (base.med(ratios) if ratios else None), len(ratios)


def target_line(results: list[RunResult], variant: str) -> str:
    """One line: the issue's target for ``variant``, the measured median ratio, met or missed."""
    goal, text = TARGETS[variant]
    value, rounds = target_ratio(results, variant)
    if value is None:
        return f"{text}: not measured"
    verdict = "met" if value >= goal else f"**missed** by {(1 - value / goal) * 100:.0f}%"
    return f"{text}: measured {value:.2f}× (median of {rounds} per-round end-to-end ratios): {verdict}"


def _rows(runs: list[RunResult], variant: str, pairs: list[tuple[RunResult, RunResult]]) -> list[list[str]]:
    """The figures of one pair: [title, gateway, Postfix, ratio] each."""
    spread = _base().spread

    def row(title: str, get: Any, fmt: str, ratio: bool = True) -> list[str]:
        gw, pf = _values(runs, "gateway", get), _values(runs, "postfix", get)
        ratios = [get(g) / get(p) for g, p in pairs if get(p)] if ratio else []
        return [
            title,
            spread(gw, fmt) if gw and any(gw) else "–",
            spread(pf, fmt) if pf and any(pf) else "–",
            spread(ratios, ".2f") if ratios else "–",
        ]

    rows = [
        row("end-to-end msg/s", lambda r: r.e2e_rate, ".1f"),
        row("accept msg/s", lambda r: r.accept_rate, ".1f"),
        row("MTA's own CPU s per 1000 msg", lambda r: r.cpu_per_1000, ".1f"),
    ]
    for name in DAEMONS[variant]:
        rows.append(
            row(
                f"+ {DAEMON_TITLES[name]} CPU s per 1000 msg",
                lambda r, n=name: r.scanner_parts.get(n, 0.0),
                ".1f",
                ratio=False,
            )
        )
    rows.append(
        row("**all CPU s per 1000 msg** (MTA + filters)", lambda r: r.cpu_per_1000 + r.scanner_cpu_per_1000, ".1f")
    )
    rows.append(row("MTA peak memory MB¹", lambda r: r.peak_memory_mb, ".0f"))
    rows.append(row("filters' peak PSS MB", lambda r: r.scanner_peak_pss_mb, ".0f"))
    rows.append(row("messages through the filter, per run", lambda r: float(r.filtered), ".0f", ratio=False))
    return rows


def _bound(results: list[RunResult], variant: str) -> str:
    """A sentence on what bounds the pair's throughput: the filters' share of all CPU, cores busy."""
    base = _base()
    sides = {}
    for system in ("gateway", "postfix"):
        runs = [r for r in results if r.variant == variant and r.system == system and not r.error]
        if not runs:
            return ""
        total = base.med([r.cpu_per_1000 + r.scanner_cpu_per_1000 for r in runs])
        share = base.med(
            [
                r.scanner_cpu_per_1000 / (r.cpu_per_1000 + r.scanner_cpu_per_1000)
                for r in runs
                if r.cpu_per_1000 + r.scanner_cpu_per_1000
            ]
        )
        busy = base.med(
            [
                (r.cpu_seconds + r.scanner_cpu_seconds) / (r.e2e_seconds + r.drain_seconds)
                for r in runs
                if r.e2e_seconds + r.drain_seconds
            ]
        )
        sides[system] = (total, share, busy)
    (g_total, g_share, g_busy), (p_total, p_share, p_busy) = sides["gateway"], sides["postfix"]
    saturated = min(g_busy, p_busy) > 0.8 * (os.cpu_count() or 1) and min(g_share, p_share) > 0.5
    return (
        f"The filters took {g_share:.0%} of all CPU per message on the gateway's side and {p_share:.0%} on "
        f"Postfix's ({g_total:.1f} and {p_total:.1f} ms per message in all); MTA and filters together kept "
        f"{g_busy:.2f} and {p_busy:.2f} cores busy (medians; {os.cpu_count()} CPUs here)"
        + (
            ". The cores are saturated and most of their time goes to the filters, so the throughput follows "
            "the CPU per message in all; the MTA's own part, which the gateway controls, is "
            f"{g_total * (1 - g_share):.1f} against {p_total * (1 - p_share):.1f} ms"
            if saturated
            else ""
        )
        + "."
    )


def filter_report(bench: Bench, lines: list[str]) -> None:
    """The yardstick section: both pairs in one table, the targets, and what the figures include."""
    variants = [v for v in FILTER_VARIANTS if v in bench.args.variants and any(r.variant == v for r in bench.results)]
    if not variants:
        return
    base = _base()
    add = lines.append
    add("## The seed's filter stack as the yardstick")
    add("")
    add(
        "The image this gateway replaces filters mail with Postfix + amavisd-new + ClamAV + SpamAssassin. Each "
        "pair below runs the same scanning daemons on both sides; medians (min–max) over the rounds, ratios "
        "gateway/Postfix per round. The MTA's own CPU and memory are its process tree only; each filter "
        "daemon's CPU is shown apart (CPU of its whole process tree during that side's runs), and \"all CPU\" "
        "adds them up: that is the cost of a filtered message on each side."
    )
    add("")
    header, rule = ["figure"], ["---"]
    tables = {}
    for variant in variants:
        runs = [r for r in bench.results if r.variant == variant]
        tables[variant] = _rows(runs, variant, base.paired(bench.results, variant))
        n = runs[0].messages if runs else 0
        header += [f"{GATEWAY_LABELS[variant]} (N = {n})", POSTFIX_LABELS[variant], "ratio"]
        rule += ["---"] * 3
    add("| " + " | ".join(header) + " |")
    add("|" + "|".join(rule) + "|")
    # the pairs have different filter rows: one list of titles in the order of the first table's, with
    # the other's filter rows next to them; blank cells where a pair has no such row
    titles: list[str] = []
    for variant in variants:
        for title in (row[0] for row in tables[variant]):
            if title not in titles:
                after = max((i for i, t in enumerate(titles) if t.startswith(("MTA's", "+ "))), default=-1)
                titles.insert(after + 1 if title.startswith("+ ") else len(titles), title)
    for title in titles:
        cells = [title]
        for variant in variants:
            row = next((r for r in tables[variant] if r[0] == title), None)
            cells += row[1:] if row else ["", "", ""]
        add("| " + " | ".join(cells) + " |")
    add("")
    for variant in variants:
        add(f"* {target_line(bench.results, variant)}")
        why = _bound(bench.results, variant)
        if why:
            add(f"  {why}")
    add("")
    settings = bench.extras.get("filter_settings", {})
    if "amavis" in variants:
        amavis = settings.get("amavis", {})
        add(
            f'**amavis.** Gateway: `[pipeline] outbound = ["antivirus", "spamassassin"]`, clamd over its Unix '
            f"socket (INSTREAM), spamd with {amavis.get('spamd_children', bench.args.spamd_children)} children, at "
            "DATA (before the 250). Postfix: `content_filter = smtp-amavis:[127.0.0.1]:PORT`, an `smtp-amavis` "
            "transport (`smtp`, `-o smtp_data_done_timeout=1200 -o smtp_send_xforward_command=yes "
            "-o disable_dns_lookups=yes -o max_use=20`, maxproc = `$max_servers`) and the re-injection "
            "listener (`smtpd -o content_filter= -o receive_override_options=no_header_body_checks,"
            "no_unknown_recipient_checks,no_milters -o mynetworks=127.0.0.0/8 ...`), as in Postfix's FILTER_README "
            "and amavisd-new's README.postfix. A private amavisd-new 2.13 (`amavisd -c FILE foreground`, its "
            "own $MYHOME, temp, pid and lock files in the bench's work directory, loopback only, "
            f"`$max_servers = {amavis.get('max_servers', bench.args.spamd_children)}`, as many as spamd's "
            "children; `$max_requests` and the rest Debian's defaults, the BerkeleyDB cache off) checks every "
            "message with the same clamd (`@av_scanners` ClamAV-clamd: CONTSCAN of its decoded parts over the same "
            "Unix socket) and with SpamAssassin run inside its own processes, configured as spamd is (the site "
            "rules of /etc/spamassassin, `dns_available no`, `use_bayes 0`, `bayes_auto_learn 0`, local tests "
            "only). So the amavisd-new row holds what spamd does for the gateway *and* amavisd's own work (SMTP "
            'in and out, MIME decoding, file typing, header checks): compare the "all CPU" rows. Postfix\'s '
            "filter is after-queue: it accepts (its accept rate) before amavisd sees the message and queues each "
            "message twice (before the filter and after re-injection); the gateway scans before its 250. "
            "\"messages through the filter\": the gateway's scan histogram (spamassassin), amavisd-new's "
            '"Passed" log lines.'
        )
        add("")
    if "rspamd" in variants:
        workers = settings.get("rspamd", {}).get("rspamd_workers", getattr(bench.args, "rspamd_workers", 2))
        add(
            f"**rspamd.** One rspamd 3.4 serves both sides of the variant with one configuration (the test "
            "harness's: Debian's config, the modules that need the network off, DNS only to loopback; its "
            f"test-only Lua rules left out): {workers} normal workers for the gateway (`[pipeline] outbound = "
            f'["rspamd"]`, HTTP `/checkv2` at DATA, the policy\'s default score levels) and {workers} proxy '
            'workers in milter mode that scan themselves (`milter = yes`, `upstream "local" { self_scan = yes; }`) '
            "for Postfix (`smtpd_milters = inet:127.0.0.1:PORT`, `milter_default_action = accept`, "
            "`milter_protocol = 6`). Both scan at DATA, before the 250. The rspamd row is its whole process tree "
            "(main, workers, controller, hs_helper) during that side's runs, so it includes the idle workers of "
            'the other kind. "messages through the filter": rspamd\'s own `scanned` counter (controller `/stat`).'
        )
        add("")


def filter_targets(bench: Bench, lines: list[str]) -> None:
    """Rows of the report's targets table for the yardstick variants that ran."""
    for variant in FILTER_VARIANTS:
        if variant not in bench.args.variants:
            continue
        goal, text = TARGETS[variant]
        value, _ = target_ratio(bench.results, variant)
        verdict = (
            "not measured"
            if value is None
            else "met"
            if value >= goal
            else f"**missed** by {(1 - value / goal) * 100:.0f}% (goal ≥ {goal:.2f}×)"
        )
        lines.append(f"| {text} (end-to-end) | {'–' if value is None else f'{value:.2f}×'} | {verdict} |")
