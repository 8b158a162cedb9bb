"""OpenLDAP's slapd on loopback for tests: the real Debian ``slapd`` with a small test tree.

:class:`SlapdServer` writes a ``slapd.conf`` (mdb database for
``dc=example,dc=org``, the memberof overlay so that a user entry shows the
``memberOf`` of its groups), starts ``slapd -d 0`` in the foreground on a free
port of 127.0.0.1 (stopped by its own PID), and adds the tree with
``ldapadd`` as the root DN (the overlay fills ``memberOf`` on adds, not on
``slapadd``). Users and group are given by the test.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.ports import free_port
from tests.harness.processes import FolderDaemon, terminate

SLAPD = Path("/usr/sbin/slapd")
LDAPADD = Path("/usr/bin/ldapadd")
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "admin-pw"
SENDERS_GROUP = f"cn=mail-senders,ou=groups,{SUFFIX}"


class SlapdServer(FolderDaemon):
    """``with SlapdServer({"ann": ("ann@example.org", "pw", True), ...}) as ldap: ...``.

    Args:
        users: uid -> (mail, password, member of ``cn=mail-senders``).

    Attributes:
        url: ``ldap://127.0.0.1:PORT``.
    """

    def __init__(self, users: dict[str, tuple[str, str, bool]]) -> None:
        assert SLAPD.exists() and LDAPADD.exists(), "slapd and ldap-utils are installed by make test-peers"
        self.folder = Path(tempfile.mkdtemp(prefix="slapd-"))
        (self.folder / "db").mkdir()
        self.log_path = self.folder / "slapd.log"
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.config = self.folder / "slapd.conf"
        self.config.write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {self.folder}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
database mdb
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {self.folder}/db
overlay memberof
""")
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
            f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
        ]
        for uid, (mail, password, _) in users.items():
            entries.append(
                f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n"
                f"sn: Test\nmail: {mail}\nuserPassword: {password}\n"
            )
        members = [f"member: uid={uid},ou=people,{SUFFIX}\n" for uid, (_, _, member) in users.items() if member]
        entries.append(f"dn: {SENDERS_GROUP}\nobjectClass: groupOfNames\ncn: mail-senders\n" + "".join(members))
        self.ldif = "\n".join(entries)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Run slapd, wait (at most 20 s) until it answers, add the tree."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(SLAPD), "-d", "0", "-f", str(self.config), "-h", self.url + "/"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while True:
            added = subprocess.run(
                [str(LDAPADD), "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
                input=self.ldif,
                capture_output=True,
                text=True,
                timeout=20,
            )
            if added.returncode == 0:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"slapd did not take the test tree: {added.stderr} {self.log_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM slapd (by its PID) and wait; SIGKILL after 10 s."""
        terminate(self.process)
