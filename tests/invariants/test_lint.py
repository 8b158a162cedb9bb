"""The code base passes ruff's lint rules and its formatter ([tool.ruff] in pyproject.toml; issue 16).

``make lint`` runs the same two commands alone; ``ruff check --fix .`` and ``ruff format .`` repair most
of what these tests report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ruff (the locked version: its formatting changes between releases) on the repository."""
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean() -> None:
    done = ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All checks passed!" in done.stdout


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    done = ruff("format", "--check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already formatted" in done.stdout
