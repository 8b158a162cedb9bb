#!/usr/bin/env bash
# Installs the Debian packages of the container tests (tests/container, `make test-container`): the Docker
# engine and its client (docker.io: dockerd, containerd, runc, docker-init), docker-compose (v1) and
# debootstrap, which makes the tests' base image from Debian packages (no image registry is needed).
# No daemon is started here: the tests start a private dockerd when none runs (tests/harness/docker_engine.py).
# Idempotent and quick when everything is present; needs root (or sudo) otherwise.
set -euo pipefail
PACKAGES=(docker.io docker-compose debootstrap)
bash "$(dirname "$0")/apt-install.sh" "the container tests" "${PACKAGES[@]}"
