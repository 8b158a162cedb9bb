"""Virus scanning with clamd (ClamAV) over INSTREAM, through pyclamd.

At DATA the whole message, as received (CRLF, dot-unstuffed), is streamed to
clamd with the INSTREAM command (clamd(8)). clamd decodes the MIME structure
itself, so a base64 attachment is scanned decoded.

* clean → CONTINUE with ``X-Virus-Scanned: ClamAV on clamd``;
* virus → REJECT ``554 5.7.1 Virus found: <signature>`` (``action = "reject"``)
  or HOLD (``action = "hold"``); ``reason="virus"``, ``detail=<signature>``;
* larger than ``max_size`` → not scanned, CONTINUE with
  ``X-Virus-Scanned: skipped (too large)``;
* clamd unreachable, too slow, or an answer that is not exactly ``stream: OK``
  or ``stream: <signature> FOUND`` → :class:`~gateway.errors.ScannerError`.
  The pipeline applies ``on_error`` (tempfail or pass); this policy never
  decides to let a message through unscanned on an error.

pyclamd is blocking and its objects hold one socket at a time, so every scan
builds its own pyclamd object inside ``asyncio.to_thread``.

Configuration (``[antivirus]``)::

    clamd    = "unix:/run/clamav/clamd.ctl"   # or "tcp:127.0.0.1:3310"
    action   = "reject"                       # or "hold"
    timeout  = "60s"                          # socket timeout and deadline per scan
    on_error = "tempfail"                     # or "pass"; applied by the pipeline
    max_size = "25M"                          # bytes; larger messages are not scanned
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
from dataclasses import dataclass
from typing import Any, ClassVar

import pyclamd  # type: ignore[import-untyped]  # no stubs; 0.4.0 is the last release

from gateway import reply as replies
from gateway.config import Config
from gateway.errors import ConfigError, ScannerError
from gateway.message import FileText
from gateway.pipeline.policy import Policy, PolicyContext, ScannerProbe
from gateway.pipeline.section import ON_ERROR_CHOICES, Section
from gateway.values import parse_size
from gateway.verdict import Action, HeaderEdit, Verdict

DEFAULT_CLAMD = "unix:/run/clamav/clamd.ctl"  # Debian's clamd.conf LocalSocket
DEFAULT_MAX_SIZE = 25 * 1024 * 1024  # bytes; Debian's clamd StreamMaxLength default is 25M too
ACTIONS = ("reject", "hold")
SCANNED_HEADER = ("X-Virus-Scanned", "ClamAV on clamd")
SKIPPED_HEADER = ("X-Virus-Scanned", "skipped (too large)")

_CLEAN = Verdict(Action.CONTINUE, headers=HeaderEdit(prepend=(SCANNED_HEADER,)))
_SKIPPED = Verdict(Action.CONTINUE, headers=HeaderEdit(prepend=(SKIPPED_HEADER,)))
# The only two answers INSTREAM gives for a scan that ran (clamd(8) "INSTREAM").
_ANSWER_RE = re.compile(r"stream: (?:(?P<ok>OK)|(?P<signature>\S.*?) FOUND)")


@dataclass(frozen=True, slots=True)
class ClamdAddress:
    """Where clamd listens: a Unix socket ``path``, or TCP ``host`` and ``port``."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"tcp:{self.host}:{self.port}"


def parse_clamd_address(text: str) -> ClamdAddress:
    """Parse ``"unix:/absolute/path"`` or ``"tcp:host:port"``.

    The host is an IPv4 address or a host name: pyclamd connects over IPv4 only.

    Raises:
        ValueError: for anything else.
    """
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return ClamdAddress(path=rest)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and ":" not in host and "[" not in host and port.isdigit() and 1 <= int(port) <= 65535:
            return ClamdAddress(host=host, port=int(port))
    raise ValueError(f"{text!r} is not unix:/path or tcp:host:port")


class _AnswerRecorder:
    """Keeps clamd's raw answer next to pyclamd's parse of it (a mixin for pyclamd's classes).

    pyclamd's ``scan_stream`` returns None both for ``stream: OK`` and for an
    answer it does not recognise, including none at all (clamd closed the
    connection, e.g. when it died mid-scan); only the raw text tells clean from
    broken, so we must see it to fail closed.
    """

    answers: list[str]
    clamd_socket: socket.socket

    def _init_socket(self) -> None:
        try:
            super()._init_socket()  # type: ignore[misc]
        except Exception:
            # pyclamd leaves the socket of a failed connect open (also in its constructor).
            if getattr(self, "clamd_socket", None) is not None:
                self.clamd_socket.close()
            raise

    def _recv_response(self) -> Any:
        answer = super()._recv_response()  # type: ignore[misc]
        self.answers.append(answer if isinstance(answer, str) else repr(answer))
        return answer


class _UnixClient(_AnswerRecorder, pyclamd.ClamdUnixSocket):  # type: ignore[misc]
    def __init__(self, path: str, timeout: float) -> None:
        self.answers = []
        super().__init__(path, timeout)


class _NetworkClient(_AnswerRecorder, pyclamd.ClamdNetworkSocket):  # type: ignore[misc]
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.answers = []
        super().__init__(host, port, timeout)


class Antivirus(Policy):
    """Scans each message with clamd; names the signature when one matches.

    Attributes:
        address: where clamd listens.
        action: ``"reject"`` (554 5.7.1) or ``"hold"`` (hold queue) for infected mail.
        timeout: seconds; pyclamd's socket timeout and the deadline of one scan
            (the pipeline uses it as this policy's hook timeout too).
        on_error: ``"tempfail"`` or ``"pass"``; applied by the pipeline.
        max_size: bytes; larger messages are not scanned.
    """

    name: ClassVar[str] = "antivirus"
    scanner: ClassVar[str | None] = "virus"

    def __init__(self, config: Config) -> None:
        """Validate ``[antivirus]``.

        Raises:
            ConfigError: naming ``antivirus.<key>`` for an unknown key or a bad value.
        """
        section = Section(
            self.name, config.section(self.name), known={"clamd", "action", "timeout", "on_error", "max_size"}
        )
        clamd = section.text("clamd", DEFAULT_CLAMD)
        try:
            self.address = parse_clamd_address(clamd or "")
        except ValueError:
            raise ConfigError(
                section.key("clamd"), clamd, "unix:/absolute/path or tcp:host:port (IPv4 address or host name)"
            ) from None
        self.action = section.choice("action", "reject", ACTIONS)
        self.timeout = section.duration("timeout", 60.0)
        if self.timeout <= 0:
            # pyclamd would get a zero socket timeout, i.e. a non-blocking socket.
            raise ConfigError(section.key("timeout"), section.table["timeout"], "a duration above zero")
        self.on_error = section.choice("on_error", "tempfail", ON_ERROR_CHOICES)
        self.max_size = self._size(section, "max_size", DEFAULT_MAX_SIZE)

    def readiness_probe(self) -> ScannerProbe | None:
        """clamd's ``zPING``, answered ``PONG`` (clamd(8)); None with ``on_error = "pass"``."""
        if self.on_error != "tempfail":
            return None
        return ScannerProbe(
            self.name,
            str(self.address),
            b"zPING\0",
            b"PONG",
            path=self.address.path,
            host=self.address.host,
            port=self.address.port,
        )

    @staticmethod
    def _size(section: Section, key: str, default: int) -> int:
        value = section.table.get(key, default)
        try:
            size = parse_size(value)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise ConfigError(section.key(key), value, "a size above zero such as 10240000, 512k or 25M")
        return size

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        """Scan ``message`` (the whole message as received) with clamd.

        Returns:
            CONTINUE with an ``X-Virus-Scanned`` header when clean or too large
            to scan; REJECT ``554 5.7.1`` or HOLD when a signature matched.

        Raises:
            ScannerError: clamd unreachable, no answer within ``timeout``
                seconds, or an answer other than a clean/FOUND result.
        """
        if len(message) > self.max_size:
            return _SKIPPED
        try:
            # The thread cannot be cancelled: after this deadline it may linger until
            # pyclamd's own socket timeouts end it (up to 5 receive attempts).
            signature = await asyncio.wait_for(asyncio.to_thread(self._scan, message), self.timeout)
        except TimeoutError:
            raise ScannerError(f"clamd {self.address}: no answer within {self.timeout:g}s") from None
        if signature is None:
            return _CLEAN
        if self.action == "hold":
            return Verdict(Action.HOLD, reason="virus", detail=signature)
        return Verdict(Action.REJECT, replies.virus_found(signature), reason="virus", detail=signature)

    def _scan(self, message: bytes) -> str | None:
        """Blocking INSTREAM scan (runs in a worker thread); the signature name or None.

        Raises:
            ScannerError: see :meth:`on_data`.
        """
        client: _UnixClient | _NetworkClient | None = None
        try:
            if self.address.path is not None:
                client = _UnixClient(self.address.path, self.timeout)
            else:
                assert self.address.host is not None and self.address.port is not None
                client = _NetworkClient(self.address.host, self.address.port, self.timeout)
            # A file object, not bytes: for bytes whose length is a multiple of pyclamd's
            # 4096-byte chunk (0 included) it sends the end-of-stream marker twice, and the
            # second send can hit the connection clamd already closed (EPIPE).
            # A large message is read from its file in chunks, never whole into memory.
            stream = message.reader() if isinstance(message, FileText) else io.BytesIO(message)
            result = client.scan_stream(stream)
        except pyclamd.BufferTooLongError:
            raise ScannerError(f"clamd {self.address}: message larger than its StreamMaxLength") from None
        except Exception as error:
            # OSError (refused, reset, timeout, EPIPE when clamd stops reading at its
            # StreamMaxLength) or pyclamd failing to parse an odd answer (IndexError).
            answer = f" (answer {''.join(client.answers)!r})" if client is not None and client.answers else ""
            raise ScannerError(f"clamd {self.address}: {_describe(error)}{answer}") from error
        finally:
            if client is not None and getattr(client, "clamd_socket", None) is not None:
                client.clamd_socket.close()  # pyclamd leaves it open when it raises mid-scan
        return _signature(self.address, "".join(client.answers), result)


def _signature(address: ClamdAddress, answer: str, result: object) -> str | None:
    """The signature from clamd's raw INSTREAM ``answer``; None for ``stream: OK``.

    ``result`` is pyclamd's parse (None, or ``{"stream": ("FOUND"|"ERROR", text)}``);
    it must agree with the raw answer.

    Raises:
        ScannerError: for an ERROR answer, an empty or unknown one, or a disagreement.
    """
    if not answer.strip("\0 \t\r\n"):
        raise ScannerError(f"clamd {address}: connection closed without an answer")
    match = _ANSWER_RE.fullmatch(answer.strip().rstrip("\0").strip())
    if match is None:
        raise ScannerError(f"clamd {address}: unexpected answer {answer!r}")
    signature = match.group("signature")
    expected = None if signature is None else {"stream": ("FOUND", signature)}
    if result != expected:
        raise ScannerError(f"clamd {address}: answer {answer!r} but pyclamd read {result!r}")
    return signature


def _describe(error: BaseException) -> str:
    """``Type: text`` of ``error`` and of the OS error pyclamd wrapped it around, if any."""
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__ or error.__context__
    if isinstance(cause, OSError) and cause is not error:
        text += f" ({type(cause).__name__}: {cause})"
    return text
