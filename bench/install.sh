#!/usr/bin/env bash
# Installs what `make bench` needs: Postfix (the system compared against, and its smtp-source /
# smtp-sink load tools), the scanners of the scan variants (clamd, spamd, rspamd), amavisd-new (the
# content filter of Postfix in the "amavis" variant: the seed image's filter stack), strace and
# script(1) for the profile section, haproxy for the replicas section, and py-spy (into
# bench/.tools). Idempotent and quick when everything is present; needs root (or sudo).
#
# Postfix is installed with debconf "No configuration": no /etc/postfix/main.cf is written and no
# system instance is set up. policy-rc.d (exit 101) keeps the package scripts from starting any
# daemon (amavisd-new's postinst would start the amavis service); the bench runs its own private
# instances (postfix -c DIR, amavisd-new -c FILE foreground, rspamd -c ... -f) and checks afterwards
# that no system Postfix master runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(postfix clamav-daemon spamd spamc spamassassin amavisd-new rspamd strace util-linux haproxy)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  # Daemons must not start on their own: policy-rc.d says no (already there on most build images).
  if [ ! -x /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
  fi
  printf '%s\n' \
    "postfix postfix/main_mailer_type select No configuration" \
    "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections
  echo "installing Debian packages for the benchmark: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # spamassassin's postinst leaves a gpg-agent running for sa-update keys
  $SUDO gpgconf --homedir /var/lib/spamassassin/sa-update-keys --kill gpg-agent 2>/dev/null || true
fi
for tool in /usr/sbin/postfix /usr/sbin/smtp-source /usr/sbin/smtp-sink /usr/sbin/postconf; do
  [ -x "$tool" ] || { echo "bench/install.sh: $tool missing after install" >&2; exit 1; }
done
getent passwd postfix >/dev/null || { echo "bench/install.sh: user postfix missing" >&2; exit 1; }
getent group postdrop >/dev/null || { echo "bench/install.sh: group postdrop missing" >&2; exit 1; }
# No system Postfix may run: the bench's instance must be the only one (and must not disturb one).
if [ -f /var/spool/postfix/pid/master.pid ] && kill -0 "$(tr -d ' ' </var/spool/postfix/pid/master.pid)" 2>/dev/null; then
  echo "bench/install.sh: a system Postfix master is running (pid $(tr -d ' ' </var/spool/postfix/pid/master.pid));" \
       "the bench uses its own instance and leaves that one alone" >&2
fi
# py-spy (a sampling profiler, used for the profile section) goes into bench/.tools, not into the
# project's virtualenv: it is the bench's own tool. Optional: the bench runs without it.
if [ ! -x bench/.tools/bin/py-spy ]; then
  PY=python3
  [ -x .venv/bin/python ] && PY=.venv/bin/python
  "$PY" -m pip install --quiet --target bench/.tools py-spy >/dev/null 2>&1 \
    || echo "bench/install.sh: py-spy not installed (the profile section will be skipped)" >&2
fi
