"""``python -m gateway.migrate.servercontainers``."""

from gateway.migrate.servercontainers.cli import main

raise SystemExit(main())
