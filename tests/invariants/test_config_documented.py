"""Every configuration key and table an operator can set is named in README.md."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from gateway.config import Config
from gateway.pipeline.build import known_tables

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_top_level_key_is_in_the_readme():
    keys = {f.name for f in fields(Config)} - {"listeners", "sections"}
    missing = sorted(key for key in keys if f"`{key}`" not in README and f"\n{key} =" not in README)
    assert not missing, f"not documented in README.md: {missing}"


def test_every_policy_table_is_in_the_readme():
    missing = sorted(name for name in known_tables() if f"[{name}]" not in README)
    assert not missing, f"not documented in README.md: {missing}"
