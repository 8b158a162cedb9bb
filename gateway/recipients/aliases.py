"""``virtual_alias_maps``: aliases, lists and catch-alls, expanded at RCPT (Postfix virtual(5)).

The table is Postfix's text form::

    support@example.com adam@example.com,bob@example.com   # a list
    @example.com        adam@example.com                   # catch-all, lowest precedence
    adam@example.com    bob@example.com                    # alias

An address is looked up as ``user+ext@domain``, then ``user@domain``, then
``@domain`` (:func:`gateway.recipients.tables.lookup_order`); when it matched
without its extension, the extension is kept on each result of a
``user@domain`` entry (``adam+tag@`` -> ``bob+tag@``, Postfix
``propagate_unmatched_extensions``). Results are expanded again, up to
``virtual_alias_recursion_limit`` (1000) levels and
``virtual_alias_expansion_limit`` (1000) addresses; a result that names an
address already on its own path (``adam@ adam@, archive@``) is delivered
as it is instead of expanded again. Duplicates are dropped, the first kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.recipients.tables import lookup_order, read_table

KEY = "virtual_alias_maps"


class AliasLimitExceeded(ValueError):
    """An expansion deeper than the recursion limit, or longer than the expansion limit (the table's fault)."""


class VirtualAliases:
    """One alias table.

    Args:
        paths: the table files (``virtual_alias_maps``); for one key, the first file that has it wins.
        delimiter: ``recipient_delimiter`` (``""``: no extensions).
        recursion_limit: levels of expansion (``virtual_alias_recursion_limit``).
        expansion_limit: addresses one recipient may become (``virtual_alias_expansion_limit``).

    Raises:
        ConfigError: naming ``virtual_alias_maps`` when the file cannot be read or a key has no value.
    """

    def __init__(
        self, paths: Sequence[Path], delimiter: str = "+", recursion_limit: int = 1000, expansion_limit: int = 1000
    ) -> None:
        self.paths = tuple(paths)
        self.delimiter = delimiter
        self.recursion_limit = recursion_limit
        self.expansion_limit = expansion_limit
        self.entries: dict[str, list[str]] = {}
        for path in self.paths:
            for key, value in read_table(path, KEY).items():
                self.entries.setdefault(key, value.replace(",", " ").split())

    def lookup(self, address: str) -> list[str] | None:
        """The targets of the first entry that matches ``address`` (extension kept where it applies), or None."""
        for key, extension in lookup_order(address, self.delimiter):
            targets = self.entries.get(key)
            if targets is not None:
                if extension and not key.startswith("@"):
                    return [_with_extension(target, extension) for target in targets]
                return targets
        return None

    def expand(self, address: str) -> list[str]:
        """The addresses mail for ``address`` goes to: ``[address]`` when no entry matches.

        Raises:
            AliasLimitExceeded: past ``recursion_limit`` levels or ``expansion_limit`` addresses.
        """
        results: list[str] = []
        seen: set[str] = set()

        def deliver(target: str) -> None:
            if target.lower() not in seen:
                seen.add(target.lower())
                results.append(target)
                if len(results) > self.expansion_limit:
                    raise AliasLimitExceeded(
                        f"{address} expands to more than {self.expansion_limit} addresses "
                        f"(virtual_alias_expansion_limit)"
                    )

        def walk(current: str, depth: int, path: frozenset[str]) -> None:
            targets = self.lookup(current)
            if targets is None:
                deliver(current)
                return
            if depth >= self.recursion_limit:
                raise AliasLimitExceeded(
                    f"{address} is nested more than {self.recursion_limit} levels deep (virtual_alias_recursion_limit)"
                )
            for target in targets:
                if target.lower() in path:
                    deliver(target)  # names itself or an address above it: delivered, not expanded again
                else:
                    walk(target, depth + 1, path | {target.lower()})

        walk(address, 0, frozenset({address.lower()}))
        return results


def _with_extension(target: str, extension: str) -> str:
    local, at, domain = target.rpartition("@")
    return f"{local}{extension}@{domain}" if at and local else target
