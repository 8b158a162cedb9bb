"""Command line: ``gateway run | check-config | health | queue ... | dkim ... | dns-check | explain | passwd``.

The only module that exits.

Exit codes: 0 success, 1 runtime error (spool, queue ID, an existing or missing
DKIM key, a failed DNS check), 2 configuration error or bad usage (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from gateway import package_version
from gateway.config import Config, describe, load
from gateway.dkim import keys as dkim_keys
from gateway.dkim import settings as dkim_settings
from gateway.errors import ChildFailed, ConfigError, GatewayError
from gateway.logs import setup_cli_logging, setup_logging
from gateway.ops import queue_admin
from gateway.spool import Spool

log = logging.getLogger("gateway")


def _positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not more than 0 seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Filtering SMTP smarthost gateway")
    parser.add_argument("--version", action="version", version=f"gateway {package_version()}")
    parser.add_argument(
        "-c", "--config", type=Path, default=None, help="TOML config file (default: the embedded default config)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the gateway until SIGTERM")
    # Set by the supervisor on its workers' command lines (gateway.workers.role), not by operators.
    run.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    run.add_argument("--supervisor", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("--ready-fd", type=int, default=-1, help=argparse.SUPPRESS)
    run.add_argument("--listen-fd", action="append", default=[], help=argparse.SUPPRESS)
    run.add_argument("--prepare", choices=("start", "reload"), default=None, help=argparse.SUPPRESS)
    commands.add_parser("check-config", help="validate the config and print the effective values")
    queue = commands.add_parser("queue", help="inspect and manage the mail queue").add_subparsers(
        dest="queue_command", required=True
    )
    listing = queue.add_parser("list", help="list queued messages (like mailq)")
    listing.add_argument("--json", action="store_true", help="one JSON object per message")
    queue.add_parser("show", help="show one message's record and headers").add_argument("queue_id")
    queue.add_parser("flush", help="retry deferred mail now").add_argument("queue_id", nargs="?")
    delete = queue.add_parser("delete", help="delete a message (or --all)")
    delete.add_argument("queue_id", nargs="?")
    delete.add_argument("--all", action="store_true")
    queue.add_parser("hold", help="put a message on hold").add_argument("queue_id")
    queue.add_parser("release", help="release a held message").add_argument("queue_id")
    dkim = commands.add_parser("dkim", help="DKIM signing keys and their DNS records").add_subparsers(
        dest="dkim_command", required=True
    )
    genkey = dkim.add_parser("genkey", help="create a signing key under [dkim] key_directory, print its DNS record")
    genkey.add_argument("domain", metavar="DOMAIN")
    genkey.add_argument("--selector", default="mail", help="DKIM selector (default: mail)")
    genkey.add_argument("--algorithm", choices=dkim_keys.ALGORITHMS, default="rsa", help="default: rsa")
    genkey.add_argument(
        "--bits",
        type=int,
        default=dkim_keys.DEFAULT_RSA_BITS,
        help=f"RSA key size (default: {dkim_keys.DEFAULT_RSA_BITS})",
    )
    genkey.add_argument("--force", action="store_true", help="replace an existing key")
    dkim.add_parser("show", help="print the DNS records of the keys on disk").add_argument(
        "domains", nargs="*", metavar="DOMAIN", help="default: every domain that has a key"
    )
    commands.add_parser(
        "health",
        help="the running gateway's /readyz (not ready while it does not answer), else listeners, spool, certificate",
    )
    drain = commands.add_parser(
        "drain",
        help="stop taking mail, deliver for drain_timeout, hand the rest of the "
        "queue to a peer and exit (a running gateway, or a stopped spool)",
    )
    drain.add_argument("--to", dest="peer", metavar="HOST:PORT", help="the peer (default: drain_to)")
    drain.add_argument(
        "--wait",
        type=_positive_seconds,
        default=None,
        help="seconds to wait for a running gateway to finish (default: drain_timeout + 600)",
    )
    dns_parser = commands.add_parser("dns-check", help="check MX, A/AAAA, PTR, SPF, DKIM and DMARC in DNS")
    dns_parser.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: [dkim] domains, else relay_domains")
    dns_parser.add_argument(
        "--timeout", type=_positive_seconds, default=10.0, help="seconds one DNS query may take (default: 10)"
    )
    explain = commands.add_parser("explain", help="say what this config would do with one message (sends none)")
    explain.add_argument("--client", required=True, metavar="IP", help="the client's IP address")
    explain.add_argument("--from", dest="sender", required=True, metavar="ADDRESS", help='the sender ("" for <>)')
    explain.add_argument(
        "--to",
        dest="recipients",
        required=True,
        action="append",
        metavar="ADDRESS",
        help="a recipient (repeat for more)",
    )
    explain.add_argument("--helo", default="client.example", help="the HELO name (default: client.example)")
    explain.add_argument("--listener", help="the listener's name (default: the first)")
    explain.add_argument("--cert-sha256", help="the fingerprint of a verified client certificate (hex)")
    explain.add_argument("--login", help="an SMTP AUTH login, taken as logged in")
    passwd = commands.add_parser(
        "passwd",
        help="add a user to [auth] passwd_file or change its password "
        "(the password from a prompt, or the first line of stdin)",
    )
    passwd.add_argument("login", metavar="USER")
    passwd.add_argument(
        "--scheme",
        choices=("bcrypt", "argon2id"),
        default="bcrypt",
        help="hash to write: bcrypt ({BLF-CRYPT}, the default) or argon2id ({ARGON2ID})",
    )
    for sub in (parser,):
        sub.set_defaults(config_path=None)
    return parser


def _passwd(config: Config, args: argparse.Namespace) -> int:
    """``gateway passwd USER``: never a password on the command line (ps and shell history would show it)."""
    import getpass

    from gateway.auth import passwd_file_path
    from gateway.auth.passwd_file import hash_password, set_password

    path = passwd_file_path(config)
    if sys.stdin.isatty():
        password = getpass.getpass(f"New password for {args.login}: ")
        if getpass.getpass("Again: ") != password:
            print("gateway: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("gateway: an empty password is refused; nothing changed", file=sys.stderr)
        return 1
    try:
        replaced = set_password(path, args.login, hash_password(password, args.scheme))
    except ValueError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"gateway: cannot write {path}: {error}", file=sys.stderr)
        return 1
    print(f"{'changed the password of' if replaced else 'added'} {args.login} in {path}")
    return 0


def _queue(config: Config, args: argparse.Namespace) -> int:
    spool = Spool(config.spool_dir, config.spool_sync_method)
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


def _dkim(config: Config, args: argparse.Namespace) -> int:
    """``dkim genkey`` / ``dkim show``: keys under ``[dkim] key_directory``, records on stdout."""
    directory = dkim_settings.key_directory(config)
    if args.dkim_command == "genkey":
        try:
            path = dkim_keys.key_path(directory, args.domain, args.selector, args.algorithm)
            clash = [
                key
                for key in dkim_keys.list_keys(directory, args.domain)
                if key.selector == dkim_keys.dns_name(args.selector, "selector") and key.algorithm != args.algorithm
            ]
            if clash:
                # One key record per selector name (RFC 6376 §3.6.2.2), so a second
                # algorithm needs its own selector (RFC 8463 §4 signs with both).
                print(
                    f"gateway dkim genkey: selector {clash[0].selector} already has a {clash[0].algorithm} "
                    f"key ({clash[0].path}); choose another --selector, e.g. "
                    f"{clash[0].selector}-{args.algorithm}",
                    file=sys.stderr,
                )
                return 1
            dkim_keys.generate_key(path, args.algorithm, args.bits, overwrite=args.force)
        except ValueError as error:
            print(f"gateway dkim genkey: {error}", file=sys.stderr)
            return 2
        except FileExistsError:
            print(
                f"gateway dkim genkey: {path} exists; use --force to replace it "
                "(the old DNS record stops verifying), or 'gateway dkim show'",
                file=sys.stderr,
            )
            return 1
        except OSError as error:
            print(f"gateway dkim genkey: cannot write {path}: {error.strerror}", file=sys.stderr)
            return 1
        private_key = dkim_keys.load_private_key(path)
        print(
            f"; DKIM {args.algorithm} key of {dkim_keys.dns_name(args.domain)}, selector "
            f"{dkim_keys.dns_name(args.selector, 'selector')}: {path}"
        )
        print(dkim_keys.dns_record(args.domain, args.selector, private_key))
        return 0
    try:
        keys = {domain: dkim_keys.list_keys(directory, domain) for domain in args.domains}
    except ValueError as error:
        print(f"gateway dkim show: {error}", file=sys.stderr)
        return 2
    if not args.domains:
        for key_file in dkim_keys.list_keys(directory):
            keys.setdefault(key_file.domain, []).append(key_file)
    status = 0
    if not keys:
        print(
            f"gateway dkim show: no DKIM keys under {directory}; create one with 'gateway dkim genkey DOMAIN'",
            file=sys.stderr,
        )
        status = 1
    for domain, found in keys.items():
        if not found:
            print(f"gateway dkim show: no DKIM key for {domain} under {directory}", file=sys.stderr)
            status = 1
        for key_file in found:
            print(
                f"; DKIM {key_file.algorithm} key of {key_file.domain}, selector {key_file.selector}: {key_file.path}"
            )
            print(dkim_keys.dns_record(key_file.domain, key_file.selector, dkim_keys.load_private_key(key_file.path)))
    return status


def _dns_check(config: Config, args: argparse.Namespace) -> int:
    """``dns-check``: one PASS/FAIL line per check, then the records to publish; 1 if any failed."""
    from gateway.ops import dns_check  # imported late: pyspf is needed by this command only

    try:
        domains = [dkim_keys.dns_name(domain) for domain in args.domains] or list(dns_check.default_domains(config))
    except ValueError as error:
        print(f"gateway dns-check: {error}", file=sys.stderr)
        return 2
    if not domains:
        print(
            "gateway dns-check: no domains: give DOMAIN arguments or set [dkim] domains or relay_domains",
            file=sys.stderr,
        )
        return 2
    results = asyncio.run(dns_check.check_domains(config, domains, timeout=args.timeout))
    print(dns_check.format_report(results))
    return 0 if all(result.passed for result in results) else 1


def _explain(config: Config, args: argparse.Namespace) -> int:
    """``explain``: the walk of :mod:`gateway.ops.explain`; 1 when the message would be refused."""
    from gateway.ops.explain import Question, explain
    from gateway.prepare import prepare

    question = Question(
        client=args.client,
        sender=args.sender,
        recipients=tuple(args.recipients),
        listener=args.listener,
        login=args.login,
        helo=args.helo,
        cert_sha256=args.cert_sha256.replace(":", "").lower() if args.cert_sha256 else None,
    )

    async def walk() -> str | None:
        prepared = prepare(config, write_files=False)
        try:
            report = await explain(config, prepared, question)
        finally:
            await prepared.pipelines.aclose()
        print(report.text(), end="")
        return "refused" if report.refused else None

    try:
        return 1 if asyncio.run(walk()) else 0
    except ValueError as error:
        print(f"gateway explain: {error}", file=sys.stderr)
        return 2


async def _check(config: Config) -> None:
    from gateway.prepare import prepare  # imported late: the queue commands do not need the SMTP stack

    prepared = prepare(config, write_files=False)
    await prepared.pipelines.aclose()


def _health(config: Config) -> int:
    from gateway.ops.health import HealthCheck, report, run_checks
    from gateway.ops.readiness import ask_running_gateway
    from gateway.prepare import server_certificate_file

    unanswered: list[HealthCheck] = []
    if config.metrics_listen and config.metrics_listen[1]:  # port 0: the running gateway's port is unknown
        answer = ask_running_gateway(config.metrics_listen)
        if answer is not None:
            print(answer[1], end="")
            return 0 if answer[0] == 200 else 1
        # Not ready even when the listeners accept: only /readyz knows the scanners and draining (and its
        # listener comes up after the workers' SMTP listeners).
        host, port = config.metrics_listen
        unanswered = [HealthCheck("readyz", False, f"{host}:{port}/readyz does not answer (not running or starting)")]
    cert_file = server_certificate_file(config)
    listeners = [(listener.name, listener.host, listener.port) for listener in config.listeners]
    results = unanswered + asyncio.run(
        run_checks(listeners, config.spool_dir, cert_file, config.queue_minfree + config.message_size_limit)
    )
    print(report(results), end="")
    return 0 if all(r.ok for r in results) else 1


def _drain(config: Config, args: argparse.Namespace) -> int:
    from gateway.ops.drain import drain_command, parse_peer

    peer = parse_peer("--to", args.peer) if args.peer else None
    return drain_command(config, peer, args.wait if args.wait is not None else config.drain_timeout + 600)


def _event_loop(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory ``event_loop`` names (None: asyncio's own)."""
    if config.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


async def _prepare(config: Config, args: argparse.Namespace) -> int:
    """``run --prepare start|reload``: the supervisor's one-shot child that builds, checks and writes
    (local CA, missing DKIM keys) what its workers will load, and the scanners' readiness probes
    (the supervisor never builds the policies), logs what to publish, and exits:
    0 when the config is good, 2 (start) or 1 (reload, refused) when it is not."""
    from gateway.ops.readiness import save_probes
    from gateway.prepare import announce, prepare, prepare_reload

    if args.prepare == "start":
        prepared = prepare(config)  # a ConfigError exits 2 through main()
    else:
        reloaded = prepare_reload(args.config)
        if reloaded is None:
            return 1
        prepared = reloaded[1]
    announce(prepared)
    save_probes(config.state_dir, prepared.pipelines.readiness_probes())
    await prepared.pipelines.aclose()
    return 0


def _run(config: Config, args: argparse.Namespace) -> int:
    # imported late: the queue commands need neither the SMTP stack nor the supervisor
    if args.prepare is not None:
        return asyncio.run(_prepare(config, args))
    if args.worker is None and config.workers > 1:
        from gateway.workers.supervisor import Supervisor

        # asyncio's own loop: the supervisor has no hot path, and uvloop would cost it 1 MB
        return asyncio.run(Supervisor(config, config_path=args.config).serve())
    log.info("event loop: %s", config.event_loop)
    with asyncio.Runner(loop_factory=_event_loop(config)) as runner:
        from gateway.app import Gateway

        role = None
        if args.worker is not None:
            from gateway.workers.role import WorkerRole

            role = WorkerRole.from_args(args.worker, args.supervisor, args.ready_fd, args.listen_fd)
        runner.run(Gateway(config, config_path=args.config, role=role).serve())
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        # Whatever the locale: a character the terminal cannot take is shown, never a crash.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = _parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        try:
            asyncio.run(_check(config))  # what `run` builds at start, without writing files
        except ConfigError as error:
            print(f"gateway: configuration error: {error}", file=sys.stderr)
            return 2
        print(describe(config))
        return 0
    if args.command != "run":
        setup_cli_logging()
    try:
        if args.command == "queue":
            return _queue(config, args)
        if args.command == "dkim":
            return _dkim(config, args)
        if args.command == "dns-check":
            return _dns_check(config, args)
        if args.command == "passwd":
            return _passwd(config, args)
        if args.command == "explain":
            return _explain(config, args)
        if args.command == "health":
            return _health(config)
        if args.command == "drain":
            return _drain(config, args)
        setup_logging(config.log_level, config.log_format)
        return _run(config, args)
    except ChildFailed as error:
        return error.status  # the child has printed its error
    except ConfigError as error:
        log.error("configuration error: %s", error)
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2
    except GatewayError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1
