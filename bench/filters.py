"""The content filters of the yardstick variants: a private amavisd-new (for Postfix), rspamd with its milter.

``amavis``: the gateway with clamd + spamd against Postfix with amavisd-new as its
``content_filter`` (the seed image's stack), both using the same clamd; amavisd-new runs
SpamAssassin in-process, configured as the harness's spamd is (offline, no Bayes).
``rspamd``: the gateway's rspamd policy against Postfix with rspamd's proxy worker as a
milter, one rspamd instance serving both sides (same configuration).

Every daemon here is started by the bench, listens on 127.0.0.1 only, keeps its files
under the bench's work directory (rspamd: its own /tmp folder, as in the harness), and is
stopped by its own PID (SIGTERM, bounded wait, then SIGKILL of exactly its process tree).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil

from bench.common import HOST, NO_PROXY, port_open, wait_until
from tests.harness.clamd import ClamdDaemon
from tests.harness.ports import free_ports
from tests.harness.spam_daemons import RspamdDaemon, SpamdDaemon

AMAVISD = Path("/usr/sbin/amavisd")
SA_SITE_DIR = Path("/etc/spamassassin")  # the site rules spamd reads too (init.pre, v*.pre, local.cf)
# What SpamdDaemon passes as --cf lines; --local becomes $sa_local_tests_only
SA_OFFLINE_CF = "dns_available no\nuse_bayes 0\nbayes_auto_learn 0\n"


def stop_tree(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM one daemon we started, wait up to ``timeout`` seconds, then SIGKILL it and what is left
    of its children (listed before the signal; psutil checks each PID still names the same process)."""
    if process is None or process.poll() is not None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5)


def amavis_config(
    home: Path, port: int, reinject_port: int, clamd_socket: Path, max_servers: int, sa_site_dir: Path
) -> str:
    """amavisd-new's whole config (``-c FILE``, so Debian's conf.d is not read): the Debian
    defaults that matter, with virus and spam checks on, files under ``home``, loopback only."""
    return f"""use strict;
$daemon_user  = 'amavis';
$daemon_group = 'amavis';
$MYHOME   = '{home}';
$TEMPBASE = "$MYHOME/tmp";
$ENV{{TMPDIR}} = $TEMPBASE;
$db_home  = "$MYHOME/db";
$pid_file  = "$MYHOME/amavisd.pid";
$lock_file = "$MYHOME/amavisd.lock";
$QUARANTINEDIR = undef;
$virus_quarantine_method = $spam_quarantine_method = undef;  # nothing is kept: clean mail only
$banned_files_quarantine_method = $bad_header_quarantine_method = undef;
$enable_db = 0;                 # no BerkeleyDB cache/nanny (Debian turns it on; a cache would skip rescans)
$DO_SYSLOG = 0;
$LOGFILE = "$MYHOME/amavis.log";
$log_level = 0;                 # one "Passed CLEAN ..." line per message
$log_recip_templ = undef;       # (not one more per recipient)
$myhostname = 'amavis.bench.localhost';
$mydomain = 'bench.localhost';
@local_domains_maps = (['.dest.example']);  # the recipients count as local: SA headers are added
$inet_socket_bind = '{HOST}';
$inet_socket_port = {port};
@inet_acl = qw(127.0.0.1);
$forward_method = 'smtp:[{HOST}]:{reinject_port}';
$notify_method  = $forward_method;
$max_servers = {max_servers};
$child_timeout = 8*60;
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
@bypass_virus_checks_maps = (0);
@bypass_spam_checks_maps  = (0);
$final_virus_destiny  = D_DISCARD;
$final_banned_destiny = D_DISCARD;
$final_spam_destiny   = D_PASS;
$final_bad_header_destiny = D_PASS;
$virus_admin = undef;
$sa_spam_subject_tag = '***SPAM*** ';
$sa_tag_level_deflt  = 2.0;
$sa_tag2_level_deflt = 6.31;
$sa_kill_level_deflt = 6.31;
$sa_mail_body_size_limit = 512*1024;  # the gateway's [spamassassin] max_size default
$sa_local_tests_only = 1;       # spamd --local
$sa_siteconfigpath = '{sa_site_dir}';
$X_HEADER_LINE = "bench amavis at $mydomain";
@av_scanners = (
  ['ClamAV-clamd',
    \\&ask_daemon, ["CONTSCAN {{}}\\n", "{clamd_socket}"],
    qr/\\bOK$/m, qr/\\bFOUND$/m,
    qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ],
);
@av_scanners_backup = ();
1;
"""


class Amavis:
    """A private amavisd-new (``amavisd -c FILE foreground``) in ``base``, on 127.0.0.1:``port``,
    forwarding to Postfix's re-injection listener on 127.0.0.1:``reinject_port``.

    Started as root, it drops to user amavis; its $MYHOME is ``base/home`` (owned by amavis). clamd (the harness's,
    running as root) reads amavis's decoded parts by path (CONTSCAN), as Debian's default does.
    """

    ready_timeout = 180.0  # seconds: SpamAssassin compiles its rules at start (slower on a busy machine)

    def __init__(self, base: Path, clamd: ClamdDaemon, max_servers: int) -> None:
        self.base = base
        self.clamd = clamd
        self.max_servers = max_servers
        self.port, self.reinject_port = free_ports(2)
        self.config_path = base / "amavisd.conf"
        self.home = base / "home"
        self.log_path = self.home / "amavis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of amavisd's parent process while it runs."""
        return self.process.pid if self.process and self.process.poll() is None else None

    def _write_files(self) -> None:
        # amavisd refuses a config file (or its folder) that is not root's alone: config and SA site
        # rules in ``base`` (root, 755), its own files in ``home`` (amavis)
        self.base.chmod(0o755)
        for sub in ("tmp", "db"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.home, self.home / "tmp", self.home / "db"):
            shutil.chown(path, "amavis", "amavis")
        # SpamAssassin's site rules as spamd reads them, plus spamd's --cf lines as one more file
        site = self.base / "sa-site"
        site.mkdir(exist_ok=True)
        for path in SA_SITE_DIR.iterdir():
            if path.suffix in (".pre", ".cf") and not (site / path.name).exists():
                (site / path.name).symlink_to(path)
        (site / "zz-bench-offline.cf").write_text(SA_OFFLINE_CF)
        self.config_path.write_text(
            amavis_config(self.home, self.port, self.reinject_port, self.clamd.socket_path, self.max_servers, site)
        )

    def start(self) -> None:
        """Start amavisd and wait until it accepts SMTP (bounded by ``ready_timeout`` seconds).

        Raises:
            RuntimeError: when it exits or is not ready in time (with the end of its log).
        """
        self._write_files()
        with open(self.base / "stdout.log", "ab") as out:
            process = subprocess.Popen(
                [str(AMAVISD), "-c", str(self.config_path), "foreground"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
            )
        self.process = process
        ready = wait_until(lambda: process.poll() is not None or port_open(self.port), self.ready_timeout, 0.2)
        if not ready or process.poll() is not None:
            self.stop()
            raise RuntimeError(f"amavisd did not start:\n{self.log_text()}")
        # the port opens in the parent; the preforked children may still be starting
        wait_until(lambda: len(self._children()) >= self.max_servers, 60, 0.2)

    def _children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children() if self.process else []
        except psutil.Error:
            return []

    def log_text(self, limit: int = 3000) -> str:
        """The tail of amavisd's log file and its stdout/stderr."""
        parts = []
        for path in (self.log_path, self.base / "stdout.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)

    def passed(self) -> int:
        """Messages amavisd has passed on so far ("Passed CLEAN", "Passed SPAMMY", ... log lines)."""
        try:
            return len(re.findall(r"\) Passed [A-Z-]+.*mail_id:", self.log_path.read_text(errors="replace")))
        except OSError:
            return 0

    def spam_checked(self) -> int:
        """Of those, how many SpamAssassin scored (``Hits: <number>``; ``Hits: -`` means no spam check)."""
        try:
            return len(re.findall(r"\) Passed .*mail_id:.*Hits: -?\d", self.log_path.read_text(errors="replace")))
        except OSError:
            return 0

    def stop(self) -> None:
        """SIGTERM amavisd's parent by PID; its children follow (bounded, then SIGKILL)."""
        stop_tree(self.process, 60)

    def postfix_main(self) -> dict[str, str]:
        """main.cf settings that make Postfix hand every message to this amavisd."""
        return {"content_filter": f"smtp-amavis:[{HOST}]:{self.port}"}

    def postfix_master(self) -> str:
        """master.cf lines: the smtp-amavis transport and the re-injection listener (FILTER_README's
        classic setup, amavisd-new's README.postfix)."""
        return (
            f"smtp-amavis unix - - n - {self.max_servers} smtp\n"
            "  -o smtp_data_done_timeout=1200\n  -o smtp_send_xforward_command=yes\n"
            "  -o disable_dns_lookups=yes\n  -o max_use=20\n"
            f"{HOST}:{self.reinject_port} inet n - n - - smtpd\n"
            "  -o content_filter=\n  -o local_recipient_maps=\n  -o relay_recipient_maps=\n"
            "  -o smtpd_restriction_classes=\n  -o smtpd_delay_reject=no\n"
            "  -o smtpd_client_restrictions=permit_mynetworks,reject\n  -o smtpd_helo_restrictions=\n"
            "  -o smtpd_sender_restrictions=\n  -o smtpd_recipient_restrictions=permit_mynetworks,reject\n"
            "  -o smtpd_data_restrictions=reject_unauth_pipelining\n  -o smtpd_end_of_data_restrictions=\n"
            "  -o mynetworks=127.0.0.0/8\n  -o smtpd_error_sleep_time=0\n  -o smtpd_soft_error_limit=1001\n"
            "  -o smtpd_hard_error_limit=1000\n  -o smtpd_client_connection_count_limit=0\n"
            "  -o smtpd_client_connection_rate_limit=0\n"
            "  -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters\n"
        )


class BenchRspamd(RspamdDaemon):
    """The harness's rspamd (Debian config, network modules off, loopback DNS, shared Hyperscan
    cache) with ``workers`` normal workers (the gateway's ``/checkv2``) and as many proxy workers
    in milter mode scanning themselves (``self_scan``; Postfix's ``smtpd_milters``). The harness's
    test-only Lua rules are left out."""

    def __init__(self, workers: int) -> None:
        self.workers = workers  # read by _write_config, which the parent's __init__ calls
        super().__init__()

    def _write_config(self) -> None:
        super()._write_config()
        override = self.dir / "etc" / "override.d"
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "{self.host}:{self.port}";\ncount = {self.workers};\n'
        )
        (override / "worker-proxy.inc").write_text(
            f'bind_socket = "{self.host}:{self.proxy_port}";\nenabled = true;\nmilter = yes;\ntimeout = 120s;\n'
            'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n'
            f"count = {self.workers};\n"
        )
        (self.dir / "etc" / "rspamd.local.lua").unlink(missing_ok=True)

    def start(self) -> None:
        """Start rspamd; wait for the normal worker (``/ping``) and the milter port, then for the
        Hyperscan databases (bounded), so that no measured run pays for their compilation."""
        super().start()
        if not wait_until(lambda: port_open(self.proxy_port), 30, 0.2):
            self.stop()
            raise RuntimeError(f"rspamd milter not listening on {self.proxy_port}\n{self.log_text()}")
        if not wait_until(self._hyperscan_loaded, 180, 0.5):
            print("rspamd: Hyperscan databases not loaded by every worker after 180 s; measuring anyway", flush=True)

    def _hyperscan_loaded(self) -> bool:
        """True once every normal and proxy worker has loaded the compiled Hyperscan databases."""
        try:
            text = (self.dir / "log" / "rspamd.log").read_text(errors="replace")
        except OSError:
            return False
        loaded = set(re.findall(r"#(\d+)\((?:normal|rspamd_proxy)\).*full hyperscan database .* has been loaded", text))
        return len(loaded) >= 2 * self.workers

    def postfix_main(self) -> dict[str, str]:
        """main.cf settings: the proxy worker as the milter of every smtpd (rspamd's MTA integration)."""
        return {
            "smtpd_milters": f"inet:{HOST}:{self.proxy_port}",
            "non_smtpd_milters": "",
            "milter_default_action": "accept",
            "milter_protocol": "6",
            "milter_mail_macros": "i {mail_addr} {client_addr} {client_name} {auth_authen}",
        }

    def scanned(self) -> int:
        """Messages rspamd has scanned so far, all workers (the controller's ``/stat``), -1 if unknown."""
        try:
            with NO_PROXY.open(f"http://{self.host}:{self.controller_port}/stat", timeout=10) as response:
                data: dict[str, Any] = json.loads(response.read())
            return int(data.get("scanned", -1))
        except (OSError, ValueError):
            return -1


class FilterDaemons:
    """The daemons of one yardstick variant, for both sides.

    ``amavis``: clamd and spamd (the gateway's), amavisd-new (Postfix's; it uses the same clamd).
    ``rspamd``: one rspamd (normal workers for the gateway, milter for Postfix).
    """

    def __init__(self, variant: str, workdir: Path, spamd_children: int, rspamd_workers: int) -> None:
        self.variant = variant
        self.clamd: ClamdDaemon | None = None
        self.spamd: SpamdDaemon | None = None
        self.amavis: Amavis | None = None
        self.rspamd: BenchRspamd | None = None
        if variant == "amavis":
            self.clamd = ClamdDaemon()
            self.spamd = SpamdDaemon(children=spamd_children)
            base = workdir / "amavis"
            base.mkdir(parents=True, exist_ok=True)
            self.amavis = Amavis(base, self.clamd, max_servers=spamd_children)
        elif variant == "rspamd":
            self.rspamd = BenchRspamd(rspamd_workers)
        else:
            raise ValueError(variant)

    def start(self) -> None:
        """Start every daemon of the variant (bounded waits; raises RuntimeError on failure)."""
        for daemon in (self.clamd, self.spamd, self.amavis, self.rspamd):
            if daemon is not None:
                daemon.start()

    def close(self) -> None:
        """Stop them all by PID (errors suppressed: closing must not hide the run's own error)."""
        for stop in (
            self.amavis and self.amavis.stop,
            self.spamd and self.spamd.cleanup,
            self.clamd and self.clamd.close,
            self.rspamd and self.rspamd.cleanup,
        ):
            if stop:
                with contextlib.suppress(Exception):
                    stop()

    def gateway_addresses(self) -> dict[str, str]:
        """What the gateway's config needs: clamd and spamd addresses, or rspamd's URL."""
        if self.rspamd:
            return {"rspamd": self.rspamd.url}
        assert self.clamd and self.spamd
        return {"clamd": self.clamd.unix_address, "spamd": self.spamd.address}

    def named_pids(self, kind: str) -> dict[str, int]:
        """The daemons whose CPU and memory are counted apart for ``kind`` ("gateway" or "postfix"):
        name → PID of the daemon's root process (its process tree is measured)."""
        if self.rspamd:
            pids = {"rspamd": self.rspamd.pid}
        elif kind == "gateway":
            pids = {"clamd": self.clamd.pid if self.clamd else None, "spamd": self.spamd.pid if self.spamd else None}
        else:
            pids = {
                "clamd": self.clamd.pid if self.clamd else None,
                "amavisd": self.amavis.pid if self.amavis else None,
            }
        return {name: pid for name, pid in pids.items() if pid}

    def postfix_settings(self) -> tuple[dict[str, str], str]:
        """(main.cf settings, extra master.cf lines) for the Postfix side."""
        if self.rspamd:
            return self.rspamd.postfix_main(), ""
        assert self.amavis
        return self.amavis.postfix_main(), self.amavis.postfix_master()

    def filtered(self, kind: str) -> int:
        """Messages the Postfix side's filter has handled so far (amavisd: passed; rspamd: scanned,
        both sides together); -1 when not countable."""
        if self.amavis and kind == "postfix":
            return self.amavis.passed()
        if self.rspamd:
            return self.rspamd.scanned()
        return -1

    def settings(self) -> dict[str, Any]:
        """What the report states about the filters' configuration."""
        if self.rspamd:
            return {"rspamd_workers": self.rspamd.workers}
        assert self.amavis and self.spamd
        return {"max_servers": self.amavis.max_servers, "spamd_children": self.spamd.children}

    def versions(self) -> dict[str, str]:
        """Version lines of the daemons in use."""
        commands = {
            "amavis": {
                "clamd": ["/usr/sbin/clamd", "--version"],
                "spamd": ["/usr/sbin/spamd", "--version"],
                "amavisd-new": ["dpkg-query", "-W", "-f=amavisd-new ${Version}", "amavisd-new"],
                "spamassassin": ["dpkg-query", "-W", "-f=spamassassin ${Version}", "spamassassin"],
            },
            "rspamd": {"rspamd": ["/usr/bin/rspamd", "--version"]},
        }[self.variant]
        out = {}
        for name, command in commands.items():
            with contextlib.suppress(Exception):
                text = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
                out[name] = text.splitlines()[0] if text else "?"
        return out
