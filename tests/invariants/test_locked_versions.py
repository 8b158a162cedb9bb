"""The environment runs what requirements.lock pins, and the lock covers pyproject.toml (issue 16).

``make install`` installs with ``pip install -c requirements.lock``; these tests fail when the lock and
the installed packages drift apart (an old .venv, a hand-installed upgrade) or when a requirement added to
pyproject.toml was never locked (``make lock``).
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def locked_versions() -> dict[str, str]:
    """The lock's pins: canonical package name -> exact version. Comment and option lines are skipped."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if match := PIN.match(line):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def project_requirements() -> list[Requirement]:
    """The runtime dependencies and the test extra of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_lock_pins_every_runtime_and_test_requirement_within_its_range() -> None:
    pins = locked_versions()
    assert len(pins) >= len(project_requirements()), f"{LOCK.name} has too few pins: {sorted(pins)}"
    missing = [str(r) for r in project_requirements() if canonicalize_name(r.name) not in pins]
    assert not missing, f"not in {LOCK.name} (run make lock): {missing}"
    outside = {
        str(r): pins[canonicalize_name(r.name)]
        for r in project_requirements()
        if not r.specifier.contains(Version(pins[canonicalize_name(r.name)]), prereleases=True)
    }
    assert not outside, f"pins outside pyproject.toml's ranges (run make lock): {outside}"


def test_installed_packages_are_the_locked_versions() -> None:
    installed: dict[str, str] = {}
    for name in locked_versions():
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a dependency that only another Python or platform needs
    wrong = {
        name: f"installed {installed[name]}, locked {pin}"
        for name, pin in locked_versions().items()
        if name in installed and Version(installed[name]) != Version(pin)
    }
    assert not wrong, f"not the locked versions (make install reinstalls from {LOCK.name}): {wrong}"
    # every requirement of pyproject.toml is installed, so the comparison above covered them all
    absent = [r.name for r in project_requirements() if canonicalize_name(r.name) not in installed]
    assert not absent, f"required but not installed: {absent}"
