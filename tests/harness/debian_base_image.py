"""The container tests' base image, made from Debian packages alone: no image registry is needed.

``debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm`` from the Debian
mirror this machine's apt uses (read from ``/etc/apt/sources.list`` and ``/etc/apt/sources.list.d/``),
plus the host's CA bundle (``/etc/ssl/certs/ca-certificates.crt``) in place of Debian's and an
``/etc/pip.conf`` that names it, so ``pip`` in the image works on networks that intercept TLS. The root
file system is packed into a tar file and imported with ``docker import``; ``deploy/Dockerfile`` is then
built on it with ``--build-arg BASE_IMAGE=<tag>`` (deploy/README.md shows the same by hand).

Cache: the tar file stays in ``var/container-tests/`` (ignored by git, removed by ``make clean``), named
after a digest of everything that goes into it (suite, mirror, packages, CA bundle, this recipe's
version), so a rerun imports it in seconds instead of running debootstrap again (about a minute here).
An engine that already has the image under that tag is not given it again.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.harness.docker_engine import DockerEngine, unmount_below

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "var" / "container-tests"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
REPOSITORY = "smtp-gateway-base"
RECIPE_VERSION = "1"  # change it when the steps below change, so cached tar files are not reused
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
DEBOOTSTRAP_TIMEOUT = 900.0  # seconds: a slow mirror
IMPORT_TIMEOUT = 300.0  # seconds


def source_files(places: tuple[Path, ...] = APT_SOURCES) -> list[Path]:
    """apt's source files in apt's order: ``sources.list``, then ``*.list`` and ``*.sources`` of the directory."""
    found: list[Path] = []
    for place in places:
        if place.is_dir():
            found += sorted(path for path in place.iterdir() if path.suffix in (".list", ".sources"))
        elif place.is_file():
            found.append(place)
    return found


def _one_line_entries(text: str) -> list[tuple[str, str, str, list[str]]]:
    """(type, URI, suite, components) of each ``deb [options] URI suite components...`` line."""
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] in ("deb", "deb-src"):
            if len(words) > 1 and words[1].startswith("["):  # [options] may hold spaces: skip to the "]"
                end = next((i for i, word in enumerate(words) if word.endswith("]")), len(words) - 1)
                words = [words[0], *words[end + 1 :]]
            if len(words) >= 4:
                entries.append((words[0], words[1], words[2], words[3:]))
    return entries


def _deb822_entries(text: str) -> list[tuple[str, str, str, list[str]]]:
    """(type, URI, suite, components) for each type, URI and suite of each deb822 stanza (``*.sources``)."""
    entries = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:  # a continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        entries += [
            (kind, uri, suite, fields.get("components", "").split())
            for kind in fields.get("types", "").split()
            for uri in fields.get("uris", "").split()
            for suite in fields.get("suites", "").split()
        ]
    return entries


def debian_mirror(suite: str = SUITE, files: list[Path] | None = None) -> str:
    """The URI of the first ``deb`` source with exactly ``suite`` and component ``main`` (apt's order).

    Raises:
        LookupError: no such source in ``files`` (default: :func:`source_files`); the message names them.
    """
    files = source_files() if files is None else files
    for path in files:
        text = path.read_text(errors="replace")
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for kind, uri, entry_suite, components in entries:
            if kind == "deb" and entry_suite == suite and "main" in components:
                return uri
    raise LookupError(f"no 'deb' source for suite {suite!r} with component 'main' in {[str(p) for p in files]}")


def base_image_tag(mirror: str) -> str:
    """``smtp-gateway-base:bookworm-<12 hex digits>``: the digest of everything that goes into the image."""
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, mirror, ",".join(PACKAGES), PIP_CONF):
        digest.update(part.encode() + b"\0")
    digest.update(HOST_CA_BUNDLE.read_bytes())
    return f"{REPOSITORY}:{SUITE}-{digest.hexdigest()[:12]}"


def build_root_tar(mirror: str, target: Path) -> None:
    """debootstrap a minbase root file system (see the module docstring) and pack it into ``target``.

    Raises:
        AssertionError: debootstrap or tar failed (the message carries the end of debootstrap's log).
    """
    assert DEBOOTSTRAP.exists(), "debootstrap is installed by tests/peers/install-container-packages.sh"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
    try:
        rootfs, log_path = work / "rootfs", work / "debootstrap.log"
        with open(log_path, "wb") as log:
            done = subprocess.run(
                [str(DEBOOTSTRAP), "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=DEBOOTSTRAP_TIMEOUT,
                check=False,
            )
        assert done.returncode == 0, f"debootstrap exited {done.returncode}: {log_path.read_text()[-3000:]}"
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "etc/pip.conf").write_text(PIP_CONF)
        for leftovers in (rootfs / "var/cache/apt/archives", rootfs / "var/lib/apt/lists"):
            for path in leftovers.glob("*"):  # the downloaded .deb files and package lists: not needed
                if path.is_file():
                    path.unlink()
        partial = target.with_suffix(".partial")
        packed = subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert packed.returncode == 0, packed.stderr
        partial.rename(target)
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def ensure_base_image(engine: DockerEngine) -> tuple[str, bool]:
    """The base image's tag in ``engine``, imported from the cached tar file (built first when missing).

    Returns:
        (tag, imported_here): ``imported_here`` is False when the engine had the image already, so the
        caller removes only what it brought.
    """
    mirror = debian_mirror()
    tag = base_image_tag(mirror)
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag, False
    tar_path = CACHE_DIR / (tag.replace(":", "-") + ".tar")
    if not tar_path.exists():
        for stale in CACHE_DIR.glob(f"{REPOSITORY}-*.tar"):  # older recipes or CA bundles: keep one
            stale.unlink()
        build_root_tar(mirror, tar_path)
    engine.docker(
        "import",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["/bin/bash"]',
        str(tar_path),
        tag,
        timeout=IMPORT_TIMEOUT,
    )
    return tag, True
