"""The code base type-checks with ``mypy --strict`` (STYLE.md §3.5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_is_clean():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "gateway", "policies"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
