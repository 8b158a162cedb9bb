"""Command line: ``gateway run | check-config | queue ...``. The only module that exits.

Exit codes: 0 success, 1 runtime error (spool, queue ID), 2 configuration error
or bad usage (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from gateway import __version__, queue_admin
from gateway.config import Config, describe, load
from gateway.errors import ConfigError, GatewayError
from gateway.logs import setup_logging
from gateway.spool import Spool

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Filtering SMTP smarthost gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="TOML config file (default: the embedded default config)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the gateway until SIGTERM")
    commands.add_parser("check-config", help="validate the config and print the effective values")
    queue = commands.add_parser("queue", help="inspect and manage the mail queue").add_subparsers(
        dest="queue_command", required=True)
    listing = queue.add_parser("list", help="list queued messages (like mailq)")
    listing.add_argument("--json", action="store_true", help="one JSON object per message")
    queue.add_parser("show", help="show one message's record and headers").add_argument("queue_id")
    queue.add_parser("flush", help="retry deferred mail now").add_argument("queue_id", nargs="?")
    delete = queue.add_parser("delete", help="delete a message (or --all)")
    delete.add_argument("queue_id", nargs="?")
    delete.add_argument("--all", action="store_true")
    queue.add_parser("hold", help="put a message on hold").add_argument("queue_id")
    queue.add_parser("release", help="release a held message").add_argument("queue_id")
    for sub in (parser,):
        sub.set_defaults(config_path=None)
    return parser


def _queue(config: Config, args: argparse.Namespace) -> int:
    spool = Spool(config.spool_dir)
    command = args.queue_command
    if command == "list":
        rows = queue_admin.rows(spool)
        if args.json:
            for row in rows:
                print(json.dumps(asdict(row)))
        else:
            print(queue_admin.format_list(rows))
    elif command == "show":
        print(queue_admin.show(spool, args.queue_id))
    elif command == "flush":
        flushed = queue_admin.flush(spool, args.queue_id)
        print(f"flushed {len(flushed)} message(s)")
    elif command == "delete":
        if not args.all and not args.queue_id:
            print("gateway queue delete: give a queue ID or --all", file=sys.stderr)
            return 2
        deleted = queue_admin.delete(spool, args.queue_id, all_messages=args.all)
        print(f"deleted {len(deleted)} message(s)")
    elif command == "hold":
        queue_admin.hold(spool, args.queue_id)
        print(f"{args.queue_id}: placed on hold")
    elif command == "release":
        queue_admin.release(spool, args.queue_id)
        print(f"{args.queue_id}: released")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(describe(config))
        return 0
    try:
        if args.command == "queue":
            return _queue(config, args)
        setup_logging(config.log_level, config.log_format)
        from gateway.app import Gateway  # imported late: the queue commands do not need the SMTP stack

        asyncio.run(Gateway(config).serve())
        return 0
    except ConfigError as error:
        log.error("configuration error: %s", error)
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    except GatewayError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1
