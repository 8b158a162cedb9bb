#!/usr/bin/env bash
# Installs the Debian packages of the container tests (tests/container, `make test-container`): the Docker
# engine and its client (docker.io: dockerd, containerd, runc, docker-init), docker-compose (v1) and
# debootstrap, which makes the tests' base image from Debian packages (no image registry is needed).
# No daemon is started here: the tests start a private dockerd when none runs (tests/harness/docker_engine.py).
# Idempotent and quick when everything is present; needs root (or sudo) otherwise.
set -euo pipefail
PACKAGES=(docker.io docker-compose debootstrap)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
# Daemons must not start on their own (docker.io's postinst would start dockerd): policy-rc.d says no.
if [ ! -x /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
fi
echo "installing Debian packages for the container tests: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
