"""`gateway --version` says pyproject.toml's version, the one source of the version (issue 16)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pyproject_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_gateway_version_prints_the_pyproject_version() -> None:
    # the console script make install put next to this interpreter, as an operator runs it
    script = Path(sys.executable).parent / "gateway"
    assert script.exists(), f"{script} missing: make install creates it"
    done = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"gateway {pyproject_version()}\n"


def test_the_package_says_the_same_version() -> None:
    import gateway

    assert gateway.__version__ == pyproject_version()


def _version_of_copy(tree: Path) -> str:
    """gateway.__version__ of a copy of the package in ``tree``, in an interpreter without site-packages
    (-S: no installed smtp-gateway metadata to find) and with only ``tree`` on its path."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); import gateway; print(gateway.__version__)"
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=tree)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_source_tree_never_installed_reads_its_pyproject(tmp_path: Path) -> None:
    (tmp_path / "gateway").mkdir()
    shutil.copy(ROOT / "gateway" / "__init__.py", tmp_path / "gateway" / "__init__.py")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "smtp-gateway"\nversion = "9.8.7"\n')
    assert _version_of_copy(tmp_path) == "9.8.7"
    # another project's pyproject.toml beside it is not ours; without one the version is unknown
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\nversion = "1.0"\n')
    assert _version_of_copy(tmp_path) == "0+unknown"
    (tmp_path / "pyproject.toml").unlink()
    assert _version_of_copy(tmp_path) == "0+unknown"
