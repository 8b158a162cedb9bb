"""gateway.recipients: Postfix text tables, their lookup order, and virtual alias expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.recipients.aliases import AliasLimitExceeded, VirtualAliases
from gateway.recipients.tables import lookup_order, read_table, split_extension


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "table"
    path.write_text(text)
    return path


def test_read_table_comments_continuations_case_and_missing_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# comment\n\nSupport@Example.com adam@example.com,   # a list\n"
        "   bob@example.com\n@example.com\tcatch@example.com # catch-all\nlone\n",
    )
    assert read_table(path, "k", values_required=False) == {
        "support@example.com": "adam@example.com, bob@example.com",
        "@example.com": "catch@example.com",
        "lone": "",
    }
    with pytest.raises(ConfigError) as raised:
        read_table(path, "virtual_alias_maps")
    assert raised.value.key == "virtual_alias_maps" and "line 6 has no value for lone" in str(raised.value)
    with pytest.raises(ConfigError):
        read_table(tmp_path / "absent", "relay_recipient_maps")


def test_lookup_order_and_extensions() -> None:
    assert lookup_order("Adam+Tag@Example.com", "+") == [
        ("adam+tag@example.com", ""),
        ("adam@example.com", "+tag"),
        ("@example.com", ""),
    ]
    assert lookup_order("adam@example.com", "+") == [("adam@example.com", ""), ("@example.com", "")]
    assert lookup_order("adam+tag@example.com", "") == [("adam+tag@example.com", ""), ("@example.com", "")]
    assert split_extension("+only@example.com", "+") == ("+only@example.com", "")
    assert split_extension("a-b+c@example.com", "+-") == ("a@example.com", "-b+c")


ALIASES = """\
support@example.com adam@example.com,bob@example.com   # a list
@example.com        adam@example.com                   # catch-all, lowest precedence
adam@example.com    bob@example.com                    # alias
bob@example.com     bob@example.com, archive@elsewhere.test
team@example.com    support@example.com, bob@example.com, carol@elsewhere.test
loop1@example.com   loop2@example.com
loop2@example.com   loop1@example.com
"""


def test_virtual_alias_forms(tmp_path: Path) -> None:
    aliases = VirtualAliases([write(tmp_path, ALIASES)])
    # an alias whose target maps to itself plus another: delivered to itself, not expanded again
    assert aliases.expand("adam@example.com") == ["bob@example.com", "archive@elsewhere.test"]
    assert aliases.expand("support@example.com") == ["bob@example.com", "archive@elsewhere.test"]  # deduplicated
    assert aliases.expand("team@example.com") == ["bob@example.com", "archive@elsewhere.test", "carol@elsewhere.test"]
    assert aliases.expand("nobody@example.com") == ["bob@example.com", "archive@elsewhere.test"]  # catch-all
    assert aliases.expand("someone@elsewhere.test") == ["someone@elsewhere.test"]  # no entry: itself
    # the extension is kept through a user@domain entry, not through the catch-all
    assert aliases.expand("adam+news@example.com") == ["bob+news@example.com", "archive+news@elsewhere.test"]
    assert aliases.expand("nobody+x@example.com") == ["bob@example.com", "archive@elsewhere.test"]
    # a loop ends where an address comes round again
    assert aliases.expand("loop1@example.com") == ["loop1@example.com"]


def test_virtual_alias_limits(tmp_path: Path) -> None:
    chain = "".join(f"a{n}@example.net a{n + 1}@example.net\n" for n in range(10))
    with pytest.raises(AliasLimitExceeded, match="virtual_alias_recursion_limit"):
        VirtualAliases([write(tmp_path, chain)], recursion_limit=5).expand("a0@example.net")
    assert VirtualAliases([write(tmp_path, chain)], recursion_limit=10).expand("a0@example.net") == ["a10@example.net"]
    wide = "list@example.net " + ",".join(f"m{n}@example.net" for n in range(20)) + "\n"
    with pytest.raises(AliasLimitExceeded, match="virtual_alias_expansion_limit"):
        VirtualAliases([write(tmp_path, wide)], expansion_limit=19).expand("list@example.net")
    assert len(VirtualAliases([write(tmp_path, wide)], expansion_limit=20).expand("list@example.net")) == 20
