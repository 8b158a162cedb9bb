"""Filtering SMTP smarthost gateway.

``gateway.__version__`` is the installed distribution's version (pyproject.toml's ``version``, the one
source), read from the package metadata on first use: importing ``gateway`` scans no metadata.
"""

from __future__ import annotations

from pathlib import Path

DISTRIBUTION = "smtp-gateway"
UNKNOWN_VERSION = "0+unknown"  # PEP 440 local label: a source tree neither installed nor next to its pyproject


def package_version() -> str:
    """The version of smtp-gateway, e.g. ``"0.1.0"`` (PEP 440 text).

    Read from the installed distribution's metadata (``importlib.metadata``); a source tree that was never
    installed reads ``[project] version`` of the pyproject.toml beside the package; else ``0+unknown``.
    Never raises.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    except (OSError, ValueError, KeyError, TypeError):
        return UNKNOWN_VERSION
    found = project.get("version") if project.get("name") == DISTRIBUTION else None
    return found if isinstance(found, str) else UNKNOWN_VERSION


def __getattr__(name: str) -> str:
    """``__version__`` on first access (PEP 562); any other missing attribute raises AttributeError."""
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
