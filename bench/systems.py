"""The systems under test and their peers: smtp-sink, the gateway, a private Postfix, the scanners."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import (
    HOST,
    NO_PROXY,
    POSTCONF,
    POSTFIX,
    ROOT,
    SCRIPT,
    SMTP_SINK,
    count_files,
    free_port,
    port_open,
    stop_pid,
    wait_until,
)
from bench.measure import MemorySampler, tree_cpu, vm_hwm_kib


class Sink:
    """``smtp-sink -c`` on 127.0.0.1:port; counts messages from its running counter output.

    ``refuse``: SMTP commands answered with 4xx (``-r``), for the outage test.
    """

    def __init__(self, workdir: Path, port: int, refuse: str | None = None, name: str = "sink") -> None:
        self.port = port
        self.refuse = refuse
        self.output = workdir / f"{name}-{port}-{time.monotonic_ns()}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        command = [str(SMTP_SINK), "-c", "-u", "nobody"]
        if self.refuse:
            command += ["-r", self.refuse]
        command += [f"{HOST}:{self.port}", "256"]
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if not wait_until(lambda: port_open(self.port) or self.process.poll() is not None, 10):
            self.stop()
            raise RuntimeError(f"smtp-sink not listening on {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited: {self.output.read_text(errors='replace')[-500:]}")
        return self

    def count(self) -> int:
        """Messages received so far (the last ``mesg=N`` of the counter line)."""
        try:
            with open(self.output, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 200))
                tail = handle.read()
        except OSError:
            return 0
        found = re.findall(rb"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        stop_pid(self.process, 10)

    def cpu(self) -> float:
        return tree_cpu([self.process.pid]) if self.process else 0.0


class System:
    name = "system"
    label = "system"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.workdir = workdir
        self.sink_port = sink_port
        self.port = free_port()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def root_pids(self) -> list[int]:
        raise NotImplementedError

    def queued(self) -> int:
        """Messages still in the queue (any state)."""
        raise NotImplementedError

    def deferred(self) -> int:
        raise NotImplementedError

    def peak_memory_kib(self, sampler: MemorySampler) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class WhatIf:
    """A gateway with one cost changed, for the what-if runs (never durable figures when ``fsync`` is off).

    Attributes:
        spool_threads: threads of the spool's pool (``gateway.spool.threads.resize``), None: the default.
        fsync: False makes ``os.fsync`` a no-op in the gateway process (NOT durable).
        commit_batches: group commit batches in flight
            (``gateway.spool.batcher.COMMIT_BATCHES_IN_FLIGHT``), None: the default.
    """

    spool_threads: int | None = None
    fsync: bool = True
    commit_batches: int | None = None

    def environment(self) -> dict[str, str]:
        """The variables bench/whatif_gateway.py reads."""
        env = {"WHATIF_FSYNC": "1" if self.fsync else "0"}
        if self.spool_threads is not None:
            env["WHATIF_SPOOL_THREADS"] = str(self.spool_threads)
        if self.commit_batches is not None:
            env["WHATIF_COMMIT_BATCHES"] = str(self.commit_batches)
        return env


class GatewaySystem(System):
    """One ``gateway run`` process with a config written for the bench.

    ``extra``: more top-level config lines; ``listener_extra``: more lines of its listener's table (the
    replicas extra's ``upstream_proxy_protocol``).
    """

    name = "gateway"

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        *,
        variant: str = "plain",
        dkim_keys: Path | None = None,
        scanners: dict[str, str] | None = None,
        extra: str = "",
        whatif: WhatIf | None = None,
        listener_extra: str = "",
    ) -> None:
        super().__init__(workdir, sink_port)
        self.variant = variant
        self.whatif = whatif  # a gateway with one cost changed (bench/whatif_gateway.py); None = `python -m gateway`
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.config_path = self.state / "gateway.toml"
        self.log_path = self.state / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_url: str | None = None
        self.label = "gateway" + ("" if variant == "plain" else f"+{variant}")
        sections = ""
        if variant.endswith("syncfs"):
            extra += 'spool_sync_method = "syncfs"\n'
        if variant.startswith("dkim"):
            assert dkim_keys is not None
            sections += (
                f'\n[dkim]\ndomains = ["bench.example"]\nselector = "bench"\n'
                f'algorithms = ["rsa-sha256"]\nrsa_bits = 2048\nkey_directory = "{dkim_keys}"\n'
            )
        if variant in ("scan", "amavis"):
            assert scanners is not None
            sections += (
                '\n[pipeline]\noutbound = ["antivirus", "spamassassin"]\n'
                f'\n[antivirus]\nclamd = "{scanners["clamd"]}"\n'
                f'\n[spamassassin]\naddress = "{scanners["spamd"]}"\n'
            )
        if variant == "rspamd":  # the policy's defaults otherwise (score levels, not rspamd's action)
            assert scanners is not None
            sections += f'\n[pipeline]\noutbound = ["rspamd"]\n\n[rspamd]\nurl = "{scanners["rspamd"]}"\n'
        self.config_text = (
            f'state_dir = "{self.state}"\n'
            'metrics_listen = "127.0.0.1:0"\n'
            'myhostname = "gwbench.localhost"\n'
            'mynetworks = ["127.0.0.0/8"]\n'
            f'relayhost = ["[{HOST}]:{sink_port}"]\n'
            'smtp_tls_security_level = "none"\n'
            f"{extra}"
            f'\n[[listener]]\nname = "bench"\naddress = "{HOST}:{self.port}"\ntls = "none"\n{listener_extra}'
            f"{sections}"
        )

    def start(self) -> None:
        self.config_path.write_text(self.config_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        program = ["-m", "gateway"]
        if self.whatif is not None:
            env.update(self.whatif.environment())
            program = [str(ROOT / "bench" / "whatif_gateway.py")]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *program, "--config", str(self.config_path), "run"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        # "gateway ready" is an info line; with log_level = "warning" the listener's port tells
        ready = wait_until(
            lambda: "gateway ready" in self.log_text() or port_open(self.port) or self.process.poll() is not None,
            90,
            0.1,
        )
        if not ready or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"gateway did not start; log:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_pid(self.process, 60)

    def root_pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def queued(self) -> int:
        return count_files(self.state / "spool" / "data", suffix=".eml")

    def deferred(self) -> int:
        return count_files(self.state / "spool" / "deferred", suffix=".json")

    def peak_memory_kib(self, sampler: MemorySampler) -> int:
        return max(vm_hwm_kib(self.process.pid), sampler.peak_rss_kib) if self.process else 0

    def metrics(self) -> dict[str, float]:
        """Sums and counts of the gateway's histograms (``name{labels}`` → value)."""
        if not self.metrics_url:  # looked up late: with workers the listener can be up before this line
            found = re.search(r"metrics and health on (http://[^/ ]+)/metrics", self.log_text())
            self.metrics_url = found.group(1) if found else None
        if not self.metrics_url:
            return {}
        try:
            with NO_PROXY.open(f"{self.metrics_url}/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"(gateway_\w+_(?:sum|count))(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if match:
                values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return values


POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixSystem(System):
    """A private Postfix instance: ``postfix -c DIR`` with its own queue, never the system one."""

    name = "postfix"
    label = "postfix"

    def __init__(
        self, workdir: Path, sink_port: int, extra: dict[str, str] | None = None, master_extra: str = ""
    ) -> None:
        super().__init__(workdir, sink_port)
        self.master_extra = master_extra  # more master.cf lines (a content filter's transport and listener)
        self.base = workdir / "postfix"
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "queue"
        self.data_dir = self.base / "data"
        self.log_path = self.base / "postfix.log"
        self.extra = extra or {}

    def main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-bench",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.base),
            "myhostname": "pfbench.localhost",
            "mydomain": "localhost",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[{HOST}]:{self.sink_port}",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "default_destination_concurrency_limit": "20",
            "mailbox_size_limit": "0",
            "biff": "no",
        }
        settings.update(self.extra)
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # postfix(1) reports errors on stderr only when it is a terminal, else to syslog: give it one.
        command = " ".join([str(POSTFIX), "-c", str(self.config_dir), *args])
        return subprocess.run(
            [SCRIPT, "-qec", command, "/dev/null"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        for path in (self.config_dir, self.queue_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        shutil.chown(self.data_dir, "postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(
            POSTFIX_MASTER_CF.format(host=HOST, port=self.port) + self.master_extra
        )
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix -c {self.config_dir} start failed: {result.stdout}{result.stderr}")
        if not wait_until(lambda: self.master_pid() is not None and port_open(self.port), 30, 0.1):
            self.stop()
            raise RuntimeError(f"private Postfix not ready; log:\n{self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            process = psutil.Process(pid)
            return pid if process.name() == "master" and process.status() != psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return None

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        self._postfix("stop", timeout=90)
        if not wait_until(lambda: not psutil.pid_exists(pid), 30, 0.1):
            self._postfix("abort", timeout=30)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()  # our own instance's master, by PID

    def root_pids(self) -> list[int]:
        pid = self.master_pid()
        return [pid] if pid else []

    def queued(self) -> int:
        return count_files(*(self.queue_dir / d for d in ("maildrop", "incoming", "active", "deferred", "hold")))

    def deferred(self) -> int:
        return count_files(self.queue_dir / "deferred")

    def peak_memory_kib(self, sampler: MemorySampler) -> int:
        return sampler.peak_pss_kib

    def version(self) -> str:
        result = subprocess.run(
            [str(POSTCONF), "-c", str(self.config_dir), "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout.strip() or "?"


class Scanners:
    """clamd and spamd from the test harness (EICAR-only clamd DB, spamd offline)."""

    def __init__(self, spamd_children: int) -> None:
        from tests.harness.clamd import ClamdDaemon
        from tests.harness.spam_daemons import SpamdDaemon

        self.clamd = ClamdDaemon()
        self.spamd = SpamdDaemon(children=spamd_children)

    def start(self) -> None:
        self.clamd.start()
        self.spamd.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.spamd.cleanup()
        with contextlib.suppress(Exception):
            self.clamd.close()

    def named_pids(self) -> dict[str, int]:
        """name → PID of each running scanner."""
        return {name: pid for name, pid in (("clamd", self.clamd.pid), ("spamd", self.spamd.pid)) if pid}

    def addresses(self) -> dict[str, str]:
        return {"clamd": self.clamd.unix_address, "spamd": self.spamd.address}

    def versions(self) -> dict[str, str]:
        out = {}
        for name, command in (("clamd", ["/usr/sbin/clamd", "--version"]), ("spamd", ["/usr/sbin/spamd", "--version"])):
            with contextlib.suppress(Exception):
                text = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
                out[name] = text.strip().splitlines()[0]
        return out
