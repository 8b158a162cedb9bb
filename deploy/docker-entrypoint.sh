#!/bin/sh
# Entrypoint of the gateway image.
#
# With no /etc/gateway/gateway.toml (mounted, or generated on an earlier start), the
# config is generated from the ServerContainers mail-gateway variables by
# `python -m gateway.migrate.servercontainers`; a variable the gateway cannot honour stops the
# container here with exit status 2 and a message naming it. Then the gateway
# replaces this shell (exec), so it is PID 1 and receives SIGTERM/SIGHUP itself.
#
#   docker run IMAGE                  -> gateway --config /etc/gateway/gateway.toml run
#   docker run IMAGE queue list       -> gateway --config /etc/gateway/gateway.toml queue list
#   docker run -i IMAGE passwd USER   -> gateway --config /etc/gateway/gateway.toml passwd USER
#   docker run IMAGE sh               -> sh (any other command runs as given)
set -eu

CONFIG=/etc/gateway/gateway.toml

case "${1:-run}" in
    run|check-config|queue|dkim|dns-check|health|passwd|-*) ;;
    *) exec "$@" ;;
esac

if [ ! -e "$CONFIG" ]; then
    echo "docker-entrypoint: no $CONFIG: generating it from the environment (python -m gateway.migrate.servercontainers)" >&2
    python -m gateway.migrate.servercontainers --output "$CONFIG"
fi

if [ "$#" -eq 0 ]; then
    set -- run
fi
exec gateway --config "$CONFIG" "$@"
