"""Images for the compose test's clamav, rspamd and prometheus services, built from Debian packages.

``deploy/docker-compose.yml`` names Docker Hub images (``clamav/clamav``, ``rspamd/rspamd``,
``prom/prometheus``, ``grafana/grafana``), which cannot be pulled here: no image registry is reachable.
The first three are Debian packages, so ``tests/container/images/<service>/Dockerfile`` builds a stand-in
for each on the debootstrap base image (tests/harness/debian_base_image.py): ``apt-get install`` from the
base's Debian mirror (the build runs with ``--network host``), plus the little configuration the service
needs on a compose network. Grafana has no Debian package: it gets no image and the compose test does not
start it.

Cache: the three images are saved together (``docker save``, about 1 GB: the base layer is shared) as
``var/container-tests/smtp-gateway-test-services-<digest>.tar``, the digest taken over the base image's tag
(itself a digest of everything in the base) and the three Dockerfiles; a rerun loads it in seconds instead
of building again (about half a minute here, more on a slow mirror). Older tar files are removed.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.harness.debian_base_image import CACHE_DIR
from tests.harness.docker_engine import DockerEngine

ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = ROOT / "tests" / "container" / "images"
SERVICES = ("clamav", "rspamd", "prometheus")  # grafana: not packaged by Debian
PREFIX = "smtp-gateway-test-services"
BUILD_TIMEOUT = 600.0  # seconds per image: apt downloads from the mirror
SAVE_TIMEOUT = 300.0  # seconds for docker save or docker load of the three images


def service_image_tags(base: str) -> dict[str, str]:
    """``{"clamav": "smtp-gateway-test-clamav:<12 hex digits>", ...}``: tags named after a digest of the
    base image's tag and the three Dockerfiles, so a changed recipe or base never reuses an old image."""
    digest = hashlib.sha256(base.encode() + b"\0")
    for service in SERVICES:
        digest.update(service.encode() + b"\0" + (IMAGES_DIR / service / "Dockerfile").read_bytes() + b"\0")
    version = digest.hexdigest()[:12]
    return {service: f"smtp-gateway-test-{service}:{version}" for service in SERVICES}


def ensure_service_images(engine: DockerEngine, base: str) -> tuple[dict[str, str], list[str]]:
    """The three images in ``engine``: already there, loaded from the cached tar file, or built (and cached).

    Args:
        engine: the Docker engine.
        base: the tag of the debootstrap base image in that engine (``BASE_IMAGE`` of the Dockerfiles).

    Returns:
        (tags by service, the tags this call brought into the engine: the caller removes only those).

    Raises:
        tests.harness.docker_engine.DockerError: a build, ``docker save`` or ``docker load`` failed.
    """
    tags = service_image_tags(base)
    missing = [tag for tag in tags.values() if engine.docker("image", "inspect", tag, check=False).returncode != 0]
    if not missing:
        return tags, []
    tar_path = CACHE_DIR / f"{PREFIX}-{next(iter(tags.values())).split(':')[1]}.tar"
    if tar_path.exists():
        engine.docker("load", "--quiet", "--input", str(tar_path), timeout=SAVE_TIMEOUT)
        return tags, missing
    with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:  # mostly waiting for apt's downloads
        builds = [pool.submit(_build, engine, base, service, tag) for service, tag in tags.items() if tag in missing]
        brought = [future.result() for future in builds]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in CACHE_DIR.glob(f"{PREFIX}-*.tar"):
        stale.unlink()
    partial = tar_path.with_suffix(".partial")
    engine.docker("save", "--output", str(partial), *tags.values(), timeout=SAVE_TIMEOUT)
    partial.rename(tar_path)
    return tags, brought


def _build(engine: DockerEngine, base: str, service: str, tag: str) -> str:
    """``docker build`` of ``tests/container/images/<service>`` on ``base`` (legacy builder); ``tag``."""
    engine.docker(
        "build",
        "--force-rm",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        tag,
        str(IMAGES_DIR / service),
        timeout=BUILD_TIMEOUT,
    )
    return tag
