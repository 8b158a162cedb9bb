"""The house rules of docs/architecture.md that a file listing can check (issue 11).

* no module of ``gateway/`` or ``policies/`` is over 520 lines as ``ruff format`` lays them out (one job per
  module; it was 450 hand-wrapped lines: ruff's one-argument-per-line splits make the same code ~14% longer);
* ``gateway/`` holds at most 18 Python modules at its top level (``__init__`` and
  ``__main__`` included; the package data ``default.toml`` and ``py.typed`` are not
  modules): everything else lives in a subpackage named after its concept.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 520
MAX_TOP_LEVEL_MODULES = 18


def test_no_module_is_over_520_lines():
    long = {
        str(path.relative_to(ROOT)): lines
        for package in ("gateway", "policies")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_gateway_top_level_holds_at_most_18_modules():
    modules = sorted(path.name for path in (ROOT / "gateway").glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
