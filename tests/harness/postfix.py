"""A private Postfix instance as a test peer: ``postfix -c DIR`` with its own queue, never the system one.

Used as a real client of the gateway: mail injected into its smtpd (a free
port of 127.0.0.1) is relayed to its ``relayhost``, with whatever ``main.cf``
settings the test adds (``smtp_sasl_password_maps`` ...). Postfix runs as
its ``postfix`` user, so the instance lives in a folder of its own under /tmp
that user can enter (a pytest ``tmp_path`` is private to root). Started and
stopped with ``postfix -c DIR start|stop``; the master is killed by its own PID
if it does not stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.ports import free_port
from tests.harness.processes import FolderDaemon

POSTFIX = Path("/usr/sbin/postfix")
SCRIPT = shutil.which("script") or "/usr/bin/script"  # util-linux: postfix reports errors only to a terminal
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
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


class PostfixInstance(FolderDaemon):
    """``with PostfixInstance({"relayhost": "[127.0.0.1]:2587", ...}) as postfix: ...``; mail goes in at ``port``.

    Args:
        settings: main.cf keys added to (or replacing) a relay-only base configuration.
        files: name -> text of files to write in the instance's folder (readable by Postfix only),
            e.g. a ``texthash:`` password map; ``{folder}`` in a setting names that folder.
    """

    def __init__(self, settings: dict[str, str], files: dict[str, str] | None = None) -> None:
        assert POSTFIX.exists(), "postfix is installed by make test-peers"
        self.folder = Path(tempfile.mkdtemp(prefix="postfix-"))
        self.folder.chmod(0o755)
        self.config_dir, self.queue_dir = self.folder / "etc", self.folder / "queue"
        self.data_dir, self.log_path = self.folder / "data", self.folder / "postfix.log"
        for path in (self.config_dir, self.queue_dir, self.data_dir):
            path.mkdir()
        shutil.chown(self.data_dir, "postfix")
        for name, text in (files or {}).items():
            path = self.folder / name
            path.write_text(text)
            path.chmod(0o600)
            shutil.chown(path, "postfix")
        self.port = free_port()
        main = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-test",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.folder),
            "myhostname": "postfix.test",
            "mydomain": "localhost",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:local delivery is disabled",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_tls_security_level": "none",
            "biff": "no",
        }
        main.update({key: value.replace("{folder}", str(self.folder)) for key, value in settings.items()})
        (self.config_dir / "main.cf").write_text("".join(f"{key} = {value}\n" for key, value in main.items()))
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(port=self.port))

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = " ".join([str(POSTFIX), "-c", str(self.config_dir), *args])
        return subprocess.run(
            [SCRIPT, "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """``postfix start``; wait (at most 30 s) until its smtpd port accepts connections."""
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix -c {self.config_dir} start failed: {result.stdout}{result.stderr}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"private Postfix not ready: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        """``postfix stop``; the master killed by its PID if it is still there after 30 s."""
        pid = self.master_pid()
        if pid is None:
            return
        self._postfix("stop")
        deadline = time.monotonic() + 30
        while self.master_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.master_pid() is not None:
            os.kill(pid, signal.SIGKILL)
