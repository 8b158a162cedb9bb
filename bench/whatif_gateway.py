"""Runs the gateway CLI with in-process "what if" patches, for the bench's experiments only.

The gateway's own files are untouched; the patches are applied to this process before the CLI
starts, from the comma list in the environment variable WHATIF:

* ``spool16`` - the spool's own thread pool (``gateway.spool.threads``) gets 16 threads;
* ``nofsync`` - ``os.fsync`` does nothing (NOT durable: shows what the fsyncs cost);
* ``commitN`` - N group commit batches in flight (e.g. ``commit1``) instead of
  ``gateway.spool.batcher.COMMIT_BATCHES_IN_FLIGHT``.

Logging is not patched here: the bench sets ``log_level = "warning"`` in the config for that.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PATCHES = {p for p in os.environ.get("WHATIF", "").split(",") if p}

if "spool16" in PATCHES:
    try:
        import gateway.spool.threads as spool_io
        spool_io._executor = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="spool")
        spool_io.SPOOL_THREADS = 16
    except (ImportError, AttributeError):
        print("whatif: gateway.spool.threads has no pool to resize", file=sys.stderr)

if "nofsync" in PATCHES:
    os.fsync = lambda fd: None

for _patch in [p for p in PATCHES if p.startswith("commit") and p[6:].isdigit()]:
    try:
        import gateway.spool.batcher as batcher
        batcher.COMMIT_BATCHES_IN_FLIGHT = int(_patch[6:])
    except (ImportError, AttributeError):
        print("whatif: gateway.spool.batcher has no COMMIT_BATCHES_IN_FLIGHT", file=sys.stderr)

from gateway.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
