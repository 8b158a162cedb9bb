"""Spool I/O off the event loop, in threads of its own.

Spool commits and moves block on fsync. They run in a dedicated pool so that
other blocking work (a clamd scan hanging until its timeout, DKIM signing of a
large message) cannot take every thread and hold up the 250 of unrelated
sessions, as it would in asyncio's shared default executor.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

SPOOL_THREADS = 4
_executor = ThreadPoolExecutor(max_workers=SPOOL_THREADS, thread_name_prefix="spool")


def resize(threads: int) -> None:
    """Use a pool of ``threads`` threads from now on (the benchmark's what-if runs; the default is
    :data:`SPOOL_THREADS`). Calls already queued finish on the old pool."""
    global _executor
    _executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spool")


async def run_io(func: Callable[..., T], *args: object) -> T:
    """Run the blocking spool call ``func(*args)`` in the spool thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(func, *args))
