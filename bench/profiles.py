"""Profile summaries: py-spy stacks into buckets of the gateway's code, strace syscall counts."""

from __future__ import annotations

import collections
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT


def profiles_dir(json_path: str) -> Path:
    """Where the raw py-spy stacks of a run go: bench/last-run-profiles/ next to bench/last-run.json."""
    path = Path(json_path)
    return path.parent / f"{path.stem}-profiles"


def find_py_spy() -> str | None:
    local = ROOT / "bench" / ".tools" / "bin" / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy") if (Path(sys.executable).parent / "py-spy").exists() else None
    )


def _frame_name(frame: str) -> str:
    """``handle_DATA (gateway/smtpd/handler.py:250)`` → ``gateway/smtpd/handler.py:handle_DATA``."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not match:
        return frame.strip()
    function, path = match.groups()
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{function}"


# Buckets of the gateway's CPU, by the first matching frame (outermost first) of each sample.
PROFILE_BUCKETS = [
    (
        "spool commit (thread: write + fsync)",
        ("gateway/spool/store.py:Spool.commit", "gateway/smtpd/handler.py:SmtpHandler._timed_commit"),
    ),
    ("spool claim/read/remove (threads)", ("gateway/spool/store.py:",)),
    ("logging", ("logging/__init__.py:", "logging/handlers.py:")),
    ("DKIM signing", ("gateway/dkim/signer.py:", "dkim/")),
    (
        "content scanners (policies)",
        (
            "policies/antivirus",
            "policies/spamassassin",
            "policies/rspamd",
            "policies/spam_levels",
            "aiospamc/",
            "pyclamd/",
        ),
    ),
    ("relay: SMTP client (aiosmtplib)", ("aiosmtplib/",)),
    ("relay worker (gateway/relay)", ("gateway/relay/",)),
    ("receive: DATA handling (gateway)", ("gateway/smtpd/handler.py:SmtpHandler.handle_DATA",)),
    (
        "receive: other gateway handlers (MAIL, RCPT, sessions)",
        (
            "gateway/smtpd/handler.py:",
            "gateway/smtpd/protocol.py:",
            "gateway/pipeline",
            "gateway/policy",
            "gateway/",
            "policies/",
        ),
    ),
    ("receive: aiosmtpd protocol", ("aiosmtpd/",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("asyncio event loop / streams / threads", ("asyncio/", "concurrent/futures/", "threading.py:", "selectors.py:")),
]


STACK_WIDE_BUCKETS = 5  # the first five areas claim a sample when any frame of its stack is theirs


def bucket_of(frames: list[str]) -> str:
    """The area of one sample (frames outermost first).

    The first four areas (spool commit, spool claim/read/remove, logging, DKIM, scanners...) win when any
    frame of the stack is theirs, so everything they call counts for them. Otherwise the innermost
    frame that belongs to an area decides; the event loop (asyncio, threads, selectors) only when no
    other area's frame is on the stack, so socket I/O counts for whoever does it.
    """
    frames = [f for f in frames if not f.startswith(("gateway/cli.py", "gateway/__main__.py", "gateway/app.py"))]
    for label, prefixes in PROFILE_BUCKETS[:STACK_WIDE_BUCKETS]:
        if any(frame.startswith(prefixes) for frame in frames):
            return label
    loop_label, loop_prefixes = PROFILE_BUCKETS[-1]
    for frame in reversed(frames):
        for label, prefixes in PROFILE_BUCKETS[STACK_WIDE_BUCKETS:-1]:
            if frame.startswith(prefixes):
                return label
    if any(frame.startswith(loop_prefixes) for frame in frames):
        return loop_label
    return "other"


# Known costs looked for in every profile: (key, frames that must all be on the stack (prefix match, any of
# the alternatives separated by |), what it is). Shares are of all samples of that profile.
PROFILE_PATTERNS = [
    (
        "getaddr",
        ("aiosmtpd/smtp.py:SMTP._getaddr",),
        "aiosmtpd's `SMTP._getaddr` (MAIL FROM / RCPT TO address parsing through `email._header_value_parser`)",
    ),
    (
        "getaddr_class",
        ("aiosmtpd/smtp.py:SMTP._getaddr", "<frozen abc>:ABCMeta.__new__|typing.py:Protocol.__init_subclass__"),
        "of which creating a class: `_getaddr` defines `class AddrSpec(typing.Protocol)` inside the function, "
        "so every MAIL and RCPT command builds a new ABC class",
    ),
    ("logging", ("logging/",), "the standard `logging` module (formatting and writing the log lines)"),
    ("metrics", ("prometheus_client/",), "prometheus_client counters and histograms"),
    (
        "commit_gil",
        ("gateway/spool/store.py:Spool.commit",),
        "the Python side of the spool commit (hashing, JSON, file calls) while holding the GIL",
    ),
    ("to_json", ("gateway/spool/entry.py:",), "building and parsing spool records (`gateway/spool/entry.py`)"),
    (
        "received",
        ("gateway/pipeline/received.py:",),
        "building the Received: header (`email.utils.format_datetime` ...)",
    ),
    ("aiosmtplib", ("aiosmtplib/",), "aiosmtplib, the relay's SMTP client"),
    ("dkim", ("gateway/dkim/signer.py:",), "DKIM signing (dkimpy canonicalisation, hashing, the RSA signature)"),
    (
        "aiospamc_ssl",
        ("aiospamc/", "ssl.py:SSLContext.load_default_certs"),
        "`ssl.create_default_context()` run by aiospamc for every request",
    ),
]


def summarise_py_spy(raw: str) -> dict[str, Any]:
    """Self time per function and time per bucket from py-spy's collapsed stacks."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    patterns: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        buckets[bucket_of(frames)] += count
        for key, required, _text in PROFILE_PATTERNS:
            if all(any(f.startswith(tuple(alt.split("|"))) for f in frames) for alt in required):
                patterns[key] += count
    if not total:
        return {"error": "no samples"}
    pct = lambda c: round(100.0 * c / total, 1)  # noqa: E731

    def ranked(counter: collections.Counter[str]) -> list[tuple[str, int]]:
        return sorted(counter.items(), key=lambda item: (-item[1], item[0]))

    return {
        "samples": total,
        "buckets": [(label, pct(count)) for label, count in ranked(buckets)],
        "patterns": {key: pct(count) for key, count in patterns.items()},
        "self": [(name, pct(count)) for name, count in ranked(self_time)[:20]],
        "inclusive": [
            (name, pct(count))
            for name, count in ranked(inclusive)[:60]
            if name.startswith(
                (
                    "gateway/",
                    "policies/",
                    "aiosmtpd/",
                    "aiosmtplib/",
                    "logging/",
                    "prometheus_client/",
                    "email/",
                    "asyncio/selector_events",
                    "asyncio/streams",
                    "aiospamc/",
                    "pyclamd/",
                    "ssl.py",
                    "dkim/",
                )
            )
            and not name.startswith(("gateway/cli.py", "gateway/__main__.py"))
        ][:25],
    }


def summarise_strace(text: str, messages: int) -> dict[str, Any]:
    """Calls per message of the syscalls that matter, from ``strace -c`` output."""
    calls: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^[0-9.]+$", parts[0]) and parts[-1] not in ("total",):
            try:
                name = parts[-1]
                calls[name] = int(parts[3])
                seconds[name] = float(parts[1])
            except (ValueError, IndexError):
                continue
    total_calls = sum(calls.values())
    keys = (
        "fsync",
        "fdatasync",
        "rename",
        "renameat",
        "renameat2",
        "unlink",
        "unlinkat",
        "openat",
        "write",
        "writev",
        "sendto",
        "sendmsg",
        "read",
        "recvfrom",
        "epoll_wait",
        "futex",
        "clone3",
        "clone",
        "mmap",
        "munmap",
        "sendfile",
        "getrandom",
        "lseek",
        "fstat",
        "newfstatat",
    )
    return {
        "messages": messages,
        "per_message": {k: round(calls[k] / messages, 2) for k in keys if k in calls},
        "total_per_message": round(total_calls / messages, 1),
        "top": sorted(((k, round(v / messages, 2)) for k, v in calls.items()), key=lambda kv: -kv[1])[:12],
    }
