"""Runs the gateway CLI with one cost changed, for the bench's what-if runs only (bench.systems.WhatIf).

The gateway's own files are untouched. What is changed comes from the environment, set by
``WhatIf.environment()``, and goes through the gateway's public names:

* ``WHATIF_SPOOL_THREADS=N``: the spool's thread pool gets N threads (``gateway.spool.threads.resize``);
* ``WHATIF_COMMIT_BATCHES=N``: N group commit batches in flight
  (``gateway.spool.batcher.COMMIT_BATCHES_IN_FLIGHT``);
* ``WHATIF_FSYNC=0``: ``os.fsync`` does nothing (NOT durable: shows what the fsyncs cost).

Logging is not changed here: the bench sets ``log_level = "warning"`` in the config for that.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gateway.spool.batcher as batcher  # noqa: E402
import gateway.spool.threads as spool_threads  # noqa: E402
from gateway.cli import main  # noqa: E402

if os.environ.get("WHATIF_SPOOL_THREADS"):
    spool_threads.resize(int(os.environ["WHATIF_SPOOL_THREADS"]))
if os.environ.get("WHATIF_COMMIT_BATCHES"):
    batcher.COMMIT_BATCHES_IN_FLIGHT = int(os.environ["WHATIF_COMMIT_BATCHES"])
if os.environ.get("WHATIF_FSYNC") == "0":
    os.fsync = lambda fd: None

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
