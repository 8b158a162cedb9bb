"""The ``passwd_file`` back end: Dovecot passwd-file and htpasswd lines, checked with libpass.

One user a line, ``login:hash`` (htpasswd) or ``login:{SCHEME}hash[:uid:gid:...]``
(Dovecot's passwd-file; the fields after the hash are ignored). Hashes:
``{BLF-CRYPT}`` / ``$2y$`` ``$2b$`` ``$2a$`` (bcrypt), ``{SHA512-CRYPT}`` /
``$6$``, ``{SHA256-CRYPT}`` / ``$5$``, ``{ARGON2ID}`` / ``{ARGON2I}`` /
``$argon2id$``, and ``$apr1$`` (Apache MD5). Plain-text passwords are refused:
the file is for hashes. Blank lines and lines starting with ``#`` are skipped;
logins compare exactly (Dovecot's default).

The file is read at start (a bad line is a configuration error naming the
line) and again when its size, time or inode change, checked at each login,
so ``htpasswd`` and ``gateway passwd`` edits apply without a reload; a re-read
that fails keeps the users read before, with an error in the log. A file that
does not exist yet is an empty one, with an error in the log at start and at
each login (as Dovecot's passwd-file): a new deployment starts, and its first
``gateway passwd USER`` makes the file.

A hash check takes tens of milliseconds by design (bcrypt, argon2): it runs
in a thread, never on the event loop. An unknown login is checked against a
fixed hash of the same cost, so the answer takes as long as for a known one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import threading
from pathlib import Path

from passlib.context import CryptContext  # type: ignore[import-untyped]  # libpass ships no py.typed

from gateway.auth import AuthClient, AuthOutcome
from gateway.errors import ConfigError

log = logging.getLogger("gateway.auth")

# Dovecot scheme prefixes, and the libpass handler each hash of that scheme must be
_SCHEMES = {
    "BLF-CRYPT": "bcrypt",
    "SHA512-CRYPT": "sha512_crypt",
    "SHA256-CRYPT": "sha256_crypt",
    "ARGON2ID": "argon2",
    "ARGON2I": "argon2",
}
_CONTEXT = CryptContext(schemes=["bcrypt", "sha512_crypt", "sha256_crypt", "argon2", "apr_md5_crypt"])
# Checked for a login that is not in the file, so that its answer takes as long as a known login's.
_DUMMY_HASH = "$2b$12$Ar8xMcbPG1zkUmhGsgTOQ.ex5vLrHJBEIqyPTjFKmbN8uY2zV4tFm"  # bcrypt, cost 12: libpass's default


def parse_line(line: str) -> tuple[str, str] | None:
    """``(login, hash)`` of one line of the file; None for a blank or comment line.

    Raises:
        ValueError: the line has no ``:``, an empty login, a plain-text password,
            or a hash of a scheme not listed in the module docstring.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    login, colon, rest = text.partition(":")
    if not colon or not login:
        raise ValueError("not login:hash")
    hashed = rest.split(":", 1)[0]
    scheme = None
    if hashed.startswith("{"):
        scheme, brace, hashed = hashed[1:].partition("}")
        if not brace or scheme.upper() not in _SCHEMES:
            raise ValueError(f"scheme {{{scheme}}} is not one of {', '.join(f'{{{s}}}' for s in _SCHEMES)}")
    handler = _CONTEXT.identify(hashed, required=False)
    if handler is None:
        raise ValueError("not a password hash this back end checks (plain text is refused)")
    if scheme is not None and _SCHEMES[scheme.upper()] != handler:
        raise ValueError(f"the hash after {{{scheme}}} is not a {scheme} hash")
    return login, hashed


def read_users(path: Path) -> dict[str, str]:
    """Every ``login: hash`` of the file at ``path`` (a later line for the same login wins, as Dovecot).

    Raises:
        OSError: the file cannot be read.
        ValueError: naming the line number of a line :func:`parse_line` refuses.
    """
    users: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, 1):
            try:
                parsed = parse_line(line)
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from None
            if parsed is not None:
                users[parsed[0]] = parsed[1]
    return users


class PasswdFile:
    """The users of one password file, re-read when it changes.

    Args:
        path: the file (``auth.passwd_file``).

    Raises:
        ConfigError: naming ``auth.passwd_file`` when the file exists but cannot be read, or a line is bad.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one re-read at a time; checks run in several threads
        self._users: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        try:
            self._stamp = self._file_stamp()
            self._users = read_users(path)
        except FileNotFoundError:
            self._log_missing()
        except (OSError, ValueError) as error:
            raise ConfigError("auth.passwd_file", str(path), f"a readable password file ({error})") from None

    def _log_missing(self) -> None:
        log.error("auth: %s does not exist: no user can log in until `gateway passwd USER` adds one", self.path)

    def _file_stamp(self) -> tuple[int, int, int]:
        status = os.stat(self.path)
        return status.st_ino, status.st_size, status.st_mtime_ns

    def _current_users(self) -> dict[str, str]:
        with self._lock:
            try:
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    self._users, self._stamp = read_users(self.path), stamp
                    log.info("auth: %s read again: %d users", self.path, len(self._users))
            except (OSError, ValueError) as error:
                if self._stamp is None and isinstance(error, FileNotFoundError):
                    self._log_missing()
                    return self._users
                log.error(
                    "auth: %s cannot be read again, keeping the %d users read before: %s",
                    self.path,
                    len(self._users),
                    error,
                )
            return self._users

    def check(self, login: str, password: str) -> AuthOutcome:
        """The blocking check: right password for ``login``? (Call it in a thread; see :meth:`verify`.)"""
        hashed = self._current_users().get(login)
        try:
            matched = _CONTEXT.verify(password, hashed if hashed is not None else _DUMMY_HASH)
        except (ValueError, TypeError) as error:  # a hash libpass cannot take after all
            log.error("auth: the hash of %r in %s cannot be checked: %s", login, self.path, error)
            return AuthOutcome.FAIL
        return AuthOutcome.OK if matched and hashed is not None else AuthOutcome.FAIL

    async def verify(self, login: str, password: str, client: AuthClient) -> AuthOutcome:
        """:meth:`check` in a worker thread: a bcrypt or argon2 check takes tens of milliseconds (``client`` unused)."""
        return await asyncio.to_thread(self.check, login, password)


HASH_SCHEMES = ("bcrypt", "argon2id")  # what `gateway passwd` writes
_BAD_LOGIN = re.compile(r"[:\s\x00-\x1f\x7f]")


def hash_password(password: str, scheme: str = "bcrypt") -> str:
    """A passwd-file hash of ``password``: ``{BLF-CRYPT}$2y$...`` (bcrypt, cost 12) or ``{ARGON2ID}$argon2id$...``.

    ``$2y$`` is the bcrypt form both Dovecot and Apache's htpasswd read.

    Raises:
        ValueError: ``scheme`` is not one of :data:`HASH_SCHEMES`.
    """
    if scheme == "bcrypt":
        from passlib.hash import bcrypt  # type: ignore[import-untyped]

        return "{BLF-CRYPT}" + str(bcrypt.using(ident="2y", rounds=12).hash(password))
    if scheme == "argon2id":
        from passlib.hash import argon2

        return "{ARGON2ID}" + str(argon2.using(type="ID").hash(password))
    raise ValueError(f"scheme {scheme!r} is not one of {', '.join(HASH_SCHEMES)}")


def set_password(path: Path, login: str, hashed: str) -> bool:
    """Write ``login:hashed`` into the file at ``path``: replace the login's line, or add one (True: replaced).

    The fields after the hash on a replaced line (Dovecot's uid, gid, extra
    fields) are kept. The file is replaced in one rename, so a gateway reading
    it never sees half of it; a new file is made readable by its owner only.

    Raises:
        ValueError: ``login`` is empty or has a ``:``, white space or a control character.
        OSError: the file or its folder cannot be written.
    """
    if not login or _BAD_LOGIN.search(login):
        raise ValueError(f"login {login!r}: no ':', white space or control characters")
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        lines, mode = [], 0o600
    replaced = False
    for index, line in enumerate(lines):
        name, colon, rest = line.partition(":")
        if colon and name == login and not line.lstrip().startswith("#"):
            extra = rest.split(":", 1)[1] if ":" in rest else None
            lines[index] = f"{login}:{hashed}" + (f":{extra}" if extra is not None else "")
            replaced = True
    if not replaced:
        lines.append(f"{login}:{hashed}")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return replaced
