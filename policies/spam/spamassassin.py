"""SpamAssassin through spamd (``[spamassassin]``), scored by ``[spam_levels]``.

At DATA the message goes to spamd with a ``SYMBOLS`` request (aiospamc); the
answer's ``Spam: True ; 1000.0 / 5.0`` header gives the score (spamd's own
threshold is ignored) and the body the comma-separated rule names. The score
becomes a verdict through :class:`~policies.spam.levels.SpamLevels`.

The aiospamc client (a plain-TCP connection manager) is built once per policy
and shared by all messages; it holds no connection, opening one per request.
aiospamc's one-shot ``aiospamc.symbols()`` is not used: it builds two
``ssl.create_default_context()`` (CA bundle parsing, ~40 ms CPU on the event
loop) on every call, even for plain TCP.

Config keys (defaults): ``address`` (``"127.0.0.1:783"``, ``host:port`` or
``[v6]:port``), ``timeout`` (``"30s"``), ``on_error`` (``"tempfail"`` |
``"pass"``, applied by the pipeline), ``max_size`` (``"512k"``: larger
messages are not scanned and get ``X-Spam-Checker: spamassassin skipped (too
large)``, like spamc's ``--max-size``), ``user`` (spamd user for per-user
settings; none by default).

Any failure to get a well-formed answer (refused connection, timeout, spamd
error status, unparsable reply) raises :class:`~gateway.errors.ScannerError`.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from gateway.config import Config
from gateway.errors import ConfigError, ScannerError
from gateway.message import whole_bytes
from gateway.pipeline.policy import Policy, PolicyContext, ScannerProbe
from gateway.pipeline.section import ON_ERROR_CHOICES, Section
from gateway.values import parse_size
from gateway.verdict import Action, HeaderEdit, Verdict
from policies.spam.levels import SpamLevels

SECTION = "spamassassin"
_KNOWN = {"address", "timeout", "on_error", "max_size", "user"}
SKIPPED_TOO_LARGE = Verdict(
    Action.CONTINUE,
    headers=HeaderEdit(prepend=(("X-Spam-Checker", "spamassassin skipped (too large)"),)),
    reason="spam_skipped_size",
)


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[::1]:783"`` as (host, port).

    Raises:
        ValueError: without a host, or with a port outside 1-65535.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("expected host:port")
    return host, int(port_text)


class SpamAssassin(Policy):
    """Scores messages with spamd; thresholds from ``[spam_levels]``.

    Attributes:
        host, port: where spamd listens.
        timeout: seconds for the whole exchange (also read by the pipeline).
        on_error: ``"tempfail"`` or ``"pass"`` (applied by the pipeline).
        max_size: bytes; larger messages are passed unscanned with a header.
        user: spamd user name or None.
        levels: the spam thresholds.

    Raises:
        ConfigError: naming ``spamassassin.<key>`` or ``spam_levels.<key>``.
    """

    name: ClassVar[str] = "spamassassin"
    scanner: ClassVar[str | None] = "spam"

    def __init__(self, config: Config) -> None:
        section = Section(SECTION, config.section(SECTION), _KNOWN)
        address = section.text("address", "127.0.0.1:783") or ""
        try:
            self.host, self.port = parse_address(address)
        except ValueError:
            raise ConfigError(section.key("address"), address, "host:port, e.g. 127.0.0.1:783") from None
        self.timeout = section.duration("timeout", 30.0)
        if self.timeout <= 0:
            raise ConfigError(section.key("timeout"), section.table.get("timeout"), "a duration above 0")
        self.on_error = section.choice("on_error", "tempfail", ON_ERROR_CHOICES)
        max_size = section.table.get("max_size", "512k")
        try:
            self.max_size = parse_size(max_size)
        except ValueError as error:
            raise ConfigError(section.key("max_size"), max_size, f"a size such as 512k or 2M ({error})") from None
        self.user = section.text("user") or None
        self.levels = SpamLevels.from_config(config)
        # Built once: per-message work must not construct SSL contexts (see the module doc).
        # imported here: aiospamc costs 3 MB of memory in every gateway process that has no spamd
        import aiospamc  # type: ignore[import-untyped]  # no py.typed marker in aiospamc 1.2
        from aiospamc.client import Client  # type: ignore[import-untyped]
        from aiospamc.connections import TcpConnectionManager  # type: ignore[import-untyped]

        limit = aiospamc.Timeout(total=self.timeout, connection=self.timeout, response=self.timeout)
        self._client = Client(TcpConnectionManager(self.host, self.port, ssl_context=None, timeout=limit))

    def readiness_probe(self) -> ScannerProbe | None:
        """spamd's ``PING``, answered ``SPAMD/1.5 0 PONG`` (spamd's protocol); None with ``on_error = "pass"``."""
        if self.on_error != "tempfail":
            return None
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return ScannerProbe(self.name, target, b"PING SPAMC/1.5\r\n\r\n", b"PONG", host=self.host, port=self.port)

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        """Ask spamd for the score and rule names; map them with the spam levels.

        Raises:
            ScannerError: spamd unreachable, too slow, or its answer is unusable.
        """
        if len(message) > self.max_size:
            return SKIPPED_TOO_LARGE
        score, tests = await self.check(message)
        return self.levels.verdict(engine=self.name, score=score, tests=tests, message=message)

    async def check(self, message: bytes) -> tuple[float, list[str]]:
        """spamd's score and the names of the rules that hit (``SYMBOLS`` request).

        Raises:
            ScannerError: see :meth:`on_data`.
        """
        # at most max_size octets (checked in on_data): a file-held message is read whole here
        from aiospamc.header_values import SpamValue  # type: ignore[import-untyped]
        from aiospamc.requests import Request  # type: ignore[import-untyped]

        request = Request("SYMBOLS", body=whole_bytes(message))
        if self.user:
            request.headers.user = self.user
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.request(request)
        except TimeoutError:
            raise ScannerError(f"spamd {self.host}:{self.port}: no answer within {self.timeout:g}s") from None
        except Exception as error:  # aiospamc raises many unrelated types (ClientException, ResponseException, ...)
            raise ScannerError(f"spamd {self.host}:{self.port}: {type(error).__name__}: {error}") from error
        spam = response.headers.get("Spam")
        if not isinstance(spam, SpamValue):
            raise ScannerError(f"spamd {self.host}:{self.port}: answer without a Spam header")
        try:
            body = bytes(response.body).decode("ascii")
        except UnicodeDecodeError:
            raise ScannerError(f"spamd {self.host}:{self.port}: symbol list is not ASCII") from None
        tests = [name.strip() for name in body.split(",") if name.strip()]
        return float(spam.score), tests
