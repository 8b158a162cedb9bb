"""Dovecot's auth service on loopback for tests: the real Debian ``dovecot`` with no mail protocols.

:class:`DovecotAuthServer` writes a config with a ``passwd-file`` passdb and
an ``auth-client`` listener on a Unix socket and on a free TCP port of
127.0.0.1, runs ``dovecot -F`` (foreground: the PID is the master's, stopped by
that PID only), and waits until both listeners exist. ``auth_verbose`` logs
each check with the client's address, so tests can see the ``rip`` the gateway
sent. ``auth_failure_delay = 0``: Dovecot's 2 s pause after a failure would only
slow the tests.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.ports import free_port
from tests.harness.processes import FolderDaemon, terminate

DOVECOT = Path("/usr/sbin/dovecot")


class DovecotAuthServer(FolderDaemon):
    """One Dovecot auth service; ``with DovecotAuthServer(passwd_lines) as dovecot: ...``.

    Attributes:
        socket_path: the auth-client Unix socket; ``inet`` the ``inet:127.0.0.1:PORT`` form.
        log_path: Dovecot's log file.
    """

    def __init__(self, passwd_lines: list[str]) -> None:
        assert DOVECOT.exists(), "dovecot-core is installed by make test-peers"
        # a short folder: Unix socket paths are limited to 107 octets
        self.folder = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.socket_path = self.folder / "auth-client"
        self.port = free_port()
        self.inet = f"inet:127.0.0.1:{self.port}"
        self.log_path = self.folder / "dovecot.log"
        self.passwd = self.folder / "passwd"
        self.passwd.write_text("".join(line + "\n" for line in passwd_lines))
        (self.folder / "run").mkdir()
        (self.folder / "state").mkdir()
        self.config = self.folder / "dovecot.conf"
        self.config.write_text(f"""\
base_dir = {self.folder}/run
state_dir = {self.folder}/state
log_path = {self.log_path}
protocols =
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
passdb {{
  driver = passwd-file
  args = {self.passwd}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={self.folder}
}}
service auth {{
  user = root
  unix_listener auth-client {{
    path = {self.socket_path}
    mode = 0666
  }}
  inet_listener auth-inet {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
service anvil {{
  chroot =
}}
""")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Run Dovecot and wait (at most 20 s) until its socket and port accept connections."""
        self.process = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.process.returncode}: {self.log_text()[-2000:]}")
            if self.socket_path.exists() and _port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not start within 20 s: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM the master (by its PID) and wait for it; SIGKILL after 10 s."""
        terminate(self.process)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
