"""Operating the gateway: queue commands, DNS checks, health checks, the metrics and health HTTP listener."""
