#!/usr/bin/env bash
# apt-install.sh WHAT PACKAGE...: installs the Debian packages among PACKAGE... that are missing, for WHAT (a
# few words for the log line), with no daemon starting on its own (policy-rc.d says no). Quick when all are
# present; needs root (or sudo) otherwise. Exit status 0 when nothing was missing or all got installed.
# Used by install-debian-packages.sh (the test peers) and install-container-packages.sh.
set -euo pipefail
what="$1"
shift
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
# Daemons must not start on their own (and must not try to reach the internet): policy-rc.d says no.
if [ ! -x /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
fi
echo "installing Debian packages for $what: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
