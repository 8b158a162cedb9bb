"""The ``[dkim]`` table, read once: signing domains, algorithms, selectors, key files and their directory.

Keys of the table (README "DKIM signing"): ``domains``, ``selector`` (default
``mail``), ``ed25519_selector`` (default ``<selector>-ed25519``), ``algorithms``
(``rsa-sha256``, ``ed25519-sha256``), ``rsa_bits``, ``subdomains``,
``key_directory`` (default ``<state_dir>/dkim``) and per-domain tables
``[dkim.domain."example.com"]`` with ``selector``, ``ed25519_selector``,
``algorithms``, ``rsa_key``, ``ed25519_key``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Config
from gateway.dkim.keys import DEFAULT_RSA_BITS, MAX_RSA_BITS, MIN_RSA_BITS, key_path
from gateway.errors import ConfigError
from gateway.pipeline.section import Section

__all__ = ["ALGORITHMS", "DkimDomain", "DkimSettings", "KEY_OPTION", "KEY_TYPE", "key_directory"]

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
KEY_TYPE = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}  # a= → gateway.dkim.keys algorithm
KEY_OPTION = {"rsa-sha256": "rsa_key", "ed25519-sha256": "ed25519_key"}
_DOMAIN_KEYS = frozenset({"selector", "ed25519_selector", "algorithms", "rsa_key", "ed25519_key"})


def key_directory(config: Config) -> Path:
    """Where DKIM keys live: ``[dkim] key_directory``, default ``<state_dir>/dkim``.

    A relative ``key_directory`` is taken against ``state_dir``.

    Raises:
        ConfigError: when ``dkim.key_directory`` is not a string.
    """
    section = Section("dkim", config.section("dkim"))
    return section.path("key_directory", config.state_dir) or config.state_dir / "dkim"


@dataclass(frozen=True, slots=True)
class DkimDomain:
    """How one signing domain signs: ``d=``, algorithms, their ``s=`` and key files.

    ``selectors`` and ``key_files`` map each ``a=`` value in ``algorithms`` to its
    selector and PEM file; ``generated`` lists the algorithms whose file lives
    under ``key_directory`` and is created when missing (explicit
    ``rsa_key``/``ed25519_key`` files never are).
    """

    domain: str
    algorithms: tuple[str, ...]
    selectors: Mapping[str, str]
    key_files: Mapping[str, Path]
    generated: frozenset[str]


@dataclass(frozen=True, slots=True)
class DkimSettings:
    """The validated ``[dkim]`` table. No domains means signing is off."""

    domains: Mapping[str, DkimDomain] = field(default_factory=dict)
    subdomains: bool = False
    rsa_bits: int = DEFAULT_RSA_BITS
    key_directory: Path = Path("var/dkim")

    @property
    def enabled(self) -> bool:
        """True when at least one signing domain is configured."""
        return bool(self.domains)

    @classmethod
    def from_config(cls, config: Config) -> DkimSettings:
        """Validate ``[dkim]`` of ``config`` (see the module docstring for the keys).

        Relative ``key_directory``, ``rsa_key`` and ``ed25519_key`` paths are
        taken against ``state_dir``. Domains are stored lower case, in A-labels.

        Raises:
            ConfigError: naming ``dkim.<key>`` or ``dkim.domain.<domain>.<key>``,
                the value and what is allowed.
        """
        section = Section(
            "dkim",
            config.section("dkim"),
            {
                "domains",
                "selector",
                "ed25519_selector",
                "algorithms",
                "rsa_bits",
                "subdomains",
                "key_directory",
                "domain",
            },
        )
        domains = [_domain(section.key("domains"), raw) for raw in section.strings("domains")]
        duplicates = sorted({d for d in domains if domains.count(d) > 1})
        if duplicates:
            raise ConfigError(
                section.key("domains"), section.table["domains"], f"each domain once ({duplicates[0]} is listed twice)"
            )
        selector = _selector(section.key("selector"), section.text("selector", "mail"))
        ed25519_selector = section.text("ed25519_selector")
        if ed25519_selector is not None:
            ed25519_selector = _selector(section.key("ed25519_selector"), ed25519_selector)
        algorithms = _algorithms(section, ("rsa-sha256",))
        rsa_bits = section.table.get("rsa_bits", DEFAULT_RSA_BITS)
        if isinstance(rsa_bits, bool) or not isinstance(rsa_bits, int) or not MIN_RSA_BITS <= rsa_bits <= MAX_RSA_BITS:
            raise ConfigError(
                section.key("rsa_bits"),
                rsa_bits,
                f"a whole number of bits, {MIN_RSA_BITS}-{MAX_RSA_BITS} (RFC 8301 §3.2)",
            )
        subdomains = section.flag("subdomains", False)
        directory = key_directory(config)
        overrides = section.table.get("domain", {})
        if not isinstance(overrides, Mapping):
            raise ConfigError(
                section.key("domain"),
                overrides,
                'tables [dkim.domain."example.com"] with ' + ", ".join(sorted(_DOMAIN_KEYS)),
            )
        tables: dict[str, Section] = {}
        for raw_name, table in overrides.items():
            key = f"dkim.domain.{raw_name}"
            name = _domain(key, raw_name)
            if name not in domains:
                raise ConfigError(
                    key,
                    dict(table) if isinstance(table, Mapping) else table,
                    "overrides only for a domain listed in dkim.domains",
                )
            if not isinstance(table, Mapping):
                raise ConfigError(key, table, "a table with " + ", ".join(sorted(_DOMAIN_KEYS)))
            tables[name] = Section(key, table, set(_DOMAIN_KEYS))
        result: dict[str, DkimDomain] = {}
        for name in domains:
            result[name] = _domain_settings(
                name, tables.get(name), selector, ed25519_selector, algorithms, directory, config.state_dir
            )
        return cls(domains=result, subdomains=subdomains, rsa_bits=rsa_bits, key_directory=directory)

    def signing_domain(self, author_domain: str) -> DkimDomain | None:
        """The configured domain that signs mail from ``author_domain`` (lower case, A-labels).

        An exact match wins; with ``subdomains`` the closest listed parent domain.
        """
        found = self.domains.get(author_domain)
        if found is not None or not self.subdomains:
            return found
        labels = author_domain.split(".")
        for start in range(1, len(labels)):
            found = self.domains.get(".".join(labels[start:]))
            if found is not None:
                return found
        return None


def _domain(key: str, raw: object) -> str:
    allowed = "a domain name such as example.com"
    if not isinstance(raw, str):
        raise ConfigError(key, raw, allowed)
    name = raw.strip().lower().rstrip(".")
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ConfigError(key, raw, allowed) from None
    if not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}", ascii_name):
        raise ConfigError(key, raw, allowed + " (letters, digits and '-', at least two labels)")
    return ascii_name


def _selector(key: str, raw: str | None) -> str:
    # RFC 6376 §3.1: selector = sub-domain *("." sub-domain); underscores as OpenDKIM allows
    if raw is None or not re.fullmatch(
        r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
        r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?",
        raw,
    ):
        raise ConfigError(key, raw, "a DNS label such as mail or 2024-01 (dots allowed)")
    return raw.lower()


def _algorithms(section: Section, default: tuple[str, ...]) -> tuple[str, ...]:
    allowed = "a non-empty list of " + " and ".join(ALGORITHMS) + ", each once"
    value = section.table.get("algorithms", list(default))
    if (
        not isinstance(value, list)
        or not value
        or len(set(value)) != len(value)
        or not all(isinstance(item, str) and item in ALGORITHMS for item in value)
    ):
        raise ConfigError(section.key("algorithms"), value, allowed)
    return tuple(value)


def _domain_settings(
    name: str,
    table: Section | None,
    selector: str,
    ed25519_selector: str | None,
    algorithms: tuple[str, ...],
    directory: Path,
    state_dir: Path,
) -> DkimDomain:
    if table is not None:
        selector = _selector(table.key("selector"), table.text("selector", selector))
        if table.text("ed25519_selector") is not None:
            ed25519_selector = _selector(table.key("ed25519_selector"), table.text("ed25519_selector"))
        algorithms = _algorithms(table, algorithms)
    selectors = {"rsa-sha256": selector, "ed25519-sha256": ed25519_selector or f"{selector}-ed25519"}
    if len(algorithms) > 1 and selectors["rsa-sha256"] == selectors["ed25519-sha256"]:
        where = table.key("ed25519_selector") if table is not None else "dkim.ed25519_selector"
        raise ConfigError(
            where,
            selectors["ed25519-sha256"],
            "a selector other than the rsa-sha256 one (RFC 6376 §3.6.2.2: one key record per name)",
        )
    key_files: dict[str, Path] = {}
    generated: set[str] = set()
    for algorithm in ALGORITHMS:
        option = KEY_OPTION[algorithm]
        explicit = table.path(option, state_dir) if table is not None else None
        if explicit is not None and algorithm not in algorithms:
            raise ConfigError(
                table.key(option) if table else option,
                str(explicit),
                f"a key file only when algorithms includes {algorithm}",
            )
        if algorithm not in algorithms:
            continue
        if explicit is not None:
            key_files[algorithm] = explicit
        else:
            try:
                key_files[algorithm] = key_path(directory, name, selectors[algorithm], KEY_TYPE[algorithm])
            except ValueError as error:
                raise ConfigError(f"dkim.domain.{name}", selectors[algorithm], f"a usable selector ({error})") from None
            generated.add(algorithm)
    return DkimDomain(name, algorithms, {a: selectors[a] for a in algorithms}, key_files, frozenset(generated))
