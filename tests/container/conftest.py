"""Fixtures of the container tests: a Docker engine, the Debian base image and the gateway image built on it.

Everything made here carries the label ``smtp-gateway-tests=<run id>`` and is removed at the end of the
session: the containers, the volumes, the gateway image, the compose test's service images and the base
image when they were built or imported here, and the private dockerd when one was started
(tests/harness/docker_engine.py). The base image's root file system and the service images stay cached as
tar files in var/container-tests/ (tests/harness/debian_base_image.py, tests/harness/compose_images.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.compose_images import ensure_service_images
from tests.harness.debian_base_image import ensure_base_image
from tests.harness.docker_engine import DockerEngine

ROOT = Path(__file__).resolve().parents[2]
LABEL = "smtp-gateway-tests"
BUILD_TIMEOUT = 600.0  # seconds: pip downloads the gateway's dependencies


@pytest.fixture(scope="session")
def run_id() -> str:
    """This session's label value: 8 hex digits."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The Docker engine (a private dockerd when none runs, stopped and removed at the end)."""
    with DockerEngine() as engine:
        yield engine


def labelled(engine: DockerEngine, run_id: str) -> dict[str, list[str]]:
    """IDs of the containers, volumes and images that carry this run's label, by kind."""
    label = f"label={LABEL}={run_id}"
    return {
        "containers": engine.docker("ps", "--all", "--quiet", "--filter", label).stdout.split(),
        "volumes": engine.docker("volume", "ls", "--quiet", "--filter", label).stdout.split(),
        "images": engine.docker("images", "--quiet", "--filter", label).stdout.split(),
    }


@pytest.fixture(scope="session")
def base_image(docker_engine: DockerEngine) -> Iterator[str]:
    """The debootstrap base image's tag (tests/harness/debian_base_image.py); removed at the end if imported here."""
    base, imported_here = ensure_base_image(docker_engine)
    try:
        yield base
    finally:
        if imported_here:
            docker_engine.docker("rmi", base)


@pytest.fixture(scope="session")
def service_images(docker_engine: DockerEngine, base_image: str) -> Iterator[dict[str, str]]:
    """The compose test's clamav, rspamd and prometheus images (tests/harness/compose_images.py), by service.

    Removed at the end when this session built or loaded them (their tar file stays cached).
    """
    tags, brought_here = ensure_service_images(docker_engine, base_image)
    try:
        yield tags
    finally:
        if brought_here:
            docker_engine.docker("rmi", *brought_here)


@pytest.fixture(scope="session")
def gateway_image(docker_engine: DockerEngine, base_image: str, run_id: str) -> Iterator[str]:
    """``deploy/Dockerfile`` built with the legacy builder on the Debian base image; its tag.

    The build context is the repository root, trimmed by its ``.dockerignore``; ``--network host`` because
    the private engine has no default bridge network (pip reaches PyPI from the build container through
    the host's).
    """
    tag = f"smtp-gateway-test:{run_id}"
    try:
        docker_engine.docker(
            "build",
            "--force-rm",
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--label",
            f"{LABEL}={run_id}",
            "--file",
            "deploy/Dockerfile",
            "--tag",
            tag,
            str(ROOT),
            timeout=BUILD_TIMEOUT,
        )
        yield tag
    finally:
        left = labelled(docker_engine, run_id)
        if left["containers"]:
            docker_engine.docker("rm", "--force", "--volumes", *left["containers"])
        if left["volumes"]:
            docker_engine.docker("volume", "rm", *left["volumes"])
        docker_engine.docker("rmi", tag, check=False)  # its build layers go with it
    assert labelled(docker_engine, run_id) == {"containers": [], "volumes": [], "images": []}
