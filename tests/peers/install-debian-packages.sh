#!/usr/bin/env bash
# Installs the Debian packages the test suite runs as real peers (clamd, spamd, rspamd, swaks, msmtp, curl,
# dovecot (its auth service only), slapd, Postfix (a private instance as a client), fail2ban-regex,
# iproute2 for the network-namespace tests, haproxy as the load balancer in front of the gateway,
# redis-server for the counts replicas share).
# Idempotent and quick when everything is present; needs root (or sudo) otherwise.
set -euo pipefail
PACKAGES=(clamav-daemon clamdscan spamd spamc spamassassin rspamd swaks libnet-ssleay-perl curl msmtp
          dovecot-core slapd ldap-utils postfix libsasl2-modules libmail-dkim-perl libnet-dns-perl prometheus iproute2 fail2ban
          haproxy redis-server)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
# Postfix (a private instance is a test client) without a system configuration of its own
printf '%s\n' "postfix postfix/main_mailer_type select No configuration" "postfix postfix/mailname string localhost" \
  | $SUDO debconf-set-selections
bash "$(dirname "$0")/apt-install.sh" "the test peers" "${PACKAGES[@]}"
# spamassassin's postinst leaves a gpg-agent running for sa-update keys
$SUDO gpgconf --homedir /var/lib/spamassassin/sa-update-keys --kill gpg-agent 2>/dev/null || true
