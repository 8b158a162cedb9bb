"""rspamd over its HTTP protocol (``[rspamd]``), by score levels or by rspamd's action.

At DATA the message is POSTed to ``{url}/checkv2`` with the envelope in
request headers (rspamd protocol: ``IP``, ``Helo``, ``From``, one ``Rcpt`` per
recipient, ``Queue-Id``, ``User`` for an authenticated client, ``Password``
when configured). ``Hostname`` is not sent: we do no reverse lookup, and
rspamd treats a missing one as unknown. A loopback ``IP``, or one in rspamd's
``local_addrs`` (private ranges by default), makes rspamd skip
SPF/DKIM/DMARC/HFILTER (see shared/test-peers.md §3).

With ``use_actions = false`` (default) the score goes through
:class:`~policies.spam.levels.SpamLevels` (engine ``rspamd``), with
``[spam_levels]``'s ``subject_tag`` and ``kill_action`` but rspamd's own scale
for the levels: ``tag_level`` 2.0, ``tag2_level`` 6.0 (rspamd's ``add header``)
and ``kill_level`` 15.0 (rspamd's ``reject``), each settable in ``[rspamd]``.
The amavis defaults (6.2 / 6.9) are for SpamAssassin's scale: with them rspamd
rejected 23 of the 104 corpus messages. With ``use_actions = true`` rspamd's
``action`` decides:

* ``reject``: REJECT ``554 5.7.1 <messages.smtp_message>`` (reason ``spam``);
* ``soft reject``: TEMPFAIL ``451 4.7.1 Try again later`` (``spam_soft_reject``);
* ``greylist``: CONTINUE with the X-Spam headers (No), as rspamd's milter does (see below);
* ``rewrite subject``: CONTINUE, X-Spam headers (Yes), Subject from rspamd's
  ``subject`` (or ``subject_tag`` + Subject when rspamd gives none usable);
* ``add header``: CONTINUE, X-Spam headers (Yes);
* ``no action``: CONTINUE (X-Spam headers with No from ``tag_level`` up);
* anything else (``discard``, ``quarantine``, custom): ScannerError.

Why ``greylist`` is accepted: rspamd's greylist module turns a message it
greylists into ``soft reject`` (which we do answer 451) and downgrades the
others to ``no action``; a raw ``greylist`` action reaches us only when that
module is not running (it needs Redis), and then every retry would get the same
answer, deferring the mail until it expires. rspamd's own milter accepts such
mail (``milter.c``: ``METRIC_ACTION_GREYLIST`` → accept).

Config keys (defaults): ``url`` (``"http://127.0.0.1:11333"``), ``timeout``
(``"30s"``), ``on_error`` (``"tempfail"`` | ``"pass"``, applied by the
pipeline), ``password`` (none), ``use_actions`` (false), ``tag_level`` (2.0),
``tag2_level`` (6.0), ``kill_level`` (15.0).

HTTP errors, non-JSON answers, missing or mistyped ``action``/``score``,
unknown actions and timeouts raise :class:`~gateway.errors.ScannerError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import math
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from multidict import CIMultiDict

from gateway import reply as replies
from gateway.config import Config
from gateway.errors import ConfigError, ScannerError
from gateway.message import FileText
from gateway.pipeline.policy import Policy, PolicyContext, ScannerProbe
from gateway.pipeline.section import ON_ERROR_CHOICES, Section
from gateway.verdict import CONTINUE, Action, Verdict
from policies.spam.levels import SpamLevels

if TYPE_CHECKING:  # imported where used: aiohttp takes ~70 ms to import (it builds an SSL context),
    import aiohttp  # which every gateway start and CLI command would pay without rspamd configured

SECTION = "rspamd"
# rspamd's own scale (its default actions: add header 6, reject 15)
RSPAMD_LEVELS = {"tag_level": 2.0, "tag2_level": 6.0, "kill_level": 15.0}
_KNOWN = {"url", "timeout", "on_error", "password", "use_actions", *RSPAMD_LEVELS}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_REPLY_TEXT = 200  # characters of rspamd's smtp_message we pass on


class Rspamd(Policy):
    """Scans messages with rspamd's ``/checkv2``.

    One :class:`aiohttp.ClientSession` per policy, made on first use in the
    running loop and closed by :meth:`aclose`.

    Attributes:
        url: base URL of the normal worker, without a trailing slash.
        timeout: seconds per request (also read by the pipeline).
        on_error: ``"tempfail"`` or ``"pass"`` (applied by the pipeline).
        use_actions: follow rspamd's action instead of the score levels.
        levels: the spam thresholds.

    Raises:
        ConfigError: naming ``rspamd.<key>`` or ``spam_levels.<key>``.
    """

    name: ClassVar[str] = "rspamd"
    scanner: ClassVar[str | None] = "spam"

    def __init__(self, config: Config) -> None:
        importlib.import_module("aiohttp")  # at start, so the first scan does not pay the import
        section = Section(SECTION, config.section(SECTION), _KNOWN)
        url = section.text("url", "http://127.0.0.1:11333") or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(section.key("url"), url, "an http(s) URL such as http://127.0.0.1:11333")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ConfigError(section.key("url"), url, "an http(s) URL with a port in 1-65535") from None
        self.url = url.rstrip("/")
        self.timeout = section.duration("timeout", 30.0)
        if self.timeout <= 0:
            raise ConfigError(section.key("timeout"), section.table.get("timeout"), "a duration above 0")
        self.on_error = section.choice("on_error", "tempfail", ON_ERROR_CHOICES)
        self.password = section.text("password") or None
        if self.password is not None and _UNSAFE.search(self.password):
            raise ConfigError(section.key("password"), "***", "a password without control characters")
        self.use_actions = section.flag("use_actions", False)
        base = SpamLevels.from_config(config)
        levels = {key: section.number(key, default) for key, default in RSPAMD_LEVELS.items()}
        for low, high in (("tag_level", "tag2_level"), ("tag2_level", "kill_level")):
            if levels[low] > levels[high]:  # type: ignore[operator]
                raise ConfigError(section.key(low), levels[low], f"at most {high} ({levels[high]:g})")
        self.levels = dataclasses.replace(base, **levels)  # type: ignore[arg-type]
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def readiness_probe(self) -> ScannerProbe | None:
        """rspamd's ``GET /ping``, answered ``pong``; None with ``on_error = "pass"``."""
        if self.on_error != "tempfail":
            return None
        parts = urlsplit(self.url)
        secure = parts.scheme == "https"
        assert parts.hostname is not None  # checked in __init__
        request = f"GET {parts.path}/ping HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode("latin-1")
        return ScannerProbe(
            self.name,
            self.url,
            request,
            b"pong",
            host=parts.hostname,
            port=parts.port or (443 if secure else 80),
            tls=secure,
        )

    def request_headers(self, ctx: PolicyContext) -> CIMultiDict[str]:
        """The rspamd protocol headers for this transaction (control characters dropped)."""
        headers: CIMultiDict[str] = CIMultiDict()
        headers.add("IP", str(ctx.client.address))
        if ctx.client.helo:
            headers.add("Helo", _clean(ctx.client.helo))
        if ctx.envelope is not None:
            headers.add("From", _clean(ctx.envelope.sender) or "<>")
            for recipient in ctx.envelope.recipients:
                headers.add("Rcpt", _clean(recipient))
        if ctx.queue_id:
            headers.add("Queue-Id", _clean(ctx.queue_id))
        if ctx.client.auth_user:
            headers.add("User", _clean(ctx.client.auth_user))
        if self.password:
            headers.add("Password", self.password)
        return headers

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        """Scan with rspamd and decide by the score levels or rspamd's action.

        Raises:
            ScannerError: rspamd unreachable, too slow, or its answer is unusable.
        """
        result = await self.check(ctx, message)
        score, tests = result["score"], sorted(result["symbols"])
        if not self.use_actions:
            return self.levels.verdict(engine=self.name, score=score, tests=tests, message=message)
        return self.action_verdict(result["action"], result, score, tests, message)

    def action_verdict(
        self, action: str, result: dict[str, Any], score: float, tests: list[str], message: bytes
    ) -> Verdict:
        """Map rspamd's ``action`` to a verdict (list in the module docstring).

        Raises:
            ScannerError: on an action this gateway does not know.
        """
        detail = f"rspamd action={action!r} score={score:.3f}"
        if action == "reject":
            return Verdict(Action.REJECT, replies.scanner_rejected(_smtp_message(result)), reason="spam", detail=detail)
        if action == "soft reject":
            return Verdict(Action.TEMPFAIL, replies.SPAM_SOFT_REJECT, reason="spam_soft_reject", detail=detail)
        if action == "greylist":
            headers = self.levels.status_headers(engine=self.name, score=score, tests=tests, spam=False)
            return Verdict(Action.CONTINUE, headers=headers, reason="greylist_accepted", detail=detail)
        if action == "rewrite subject":
            subject = result.get("subject")
            usable = isinstance(subject, str) and subject.isascii() and not _UNSAFE.search(subject)
            headers = self.levels.spam_headers(
                engine=self.name, score=score, tests=tests, message=message, subject=subject if usable else None
            )
            return Verdict(Action.CONTINUE, headers=headers, reason="spam_tagged", detail=detail)
        if action == "add header":
            headers = self.levels.status_headers(engine=self.name, score=score, tests=tests, spam=True)
            return Verdict(Action.CONTINUE, headers=headers, reason="spam_tagged", detail=detail)
        if action == "no action":
            if score < self.levels.tag_level:
                return CONTINUE
            headers = self.levels.status_headers(engine=self.name, score=score, tests=tests, spam=False)
            return Verdict(Action.CONTINUE, headers=headers, detail=detail)
        raise ScannerError(f"rspamd {self.url}: unknown action {action!r}")

    async def check(self, ctx: PolicyContext, message: bytes) -> dict[str, Any]:
        """POST the message to ``/checkv2``; the parsed answer with ``action`` (str),
        ``score`` (float) and ``symbols`` (dict, maybe empty) checked.

        Raises:
            ScannerError: see :meth:`on_data`.
        """
        import aiohttp

        session = self._client()
        headers = self.request_headers(ctx)
        data: Any = message
        if isinstance(message, FileText):  # streamed from its file, with its length (no chunked encoding)
            data = _file_body(message)
            headers["Content-Length"] = str(len(message))
        try:
            async with asyncio.timeout(self.timeout):
                async with session.post(f"{self.url}/checkv2", data=data, headers=headers) as response:
                    body = await response.read()
                    status = response.status
        except TimeoutError:
            raise ScannerError(f"rspamd {self.url}: no answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise ScannerError(f"rspamd {self.url}: {type(error).__name__}: {error}") from error
        if status != 200:
            raise ScannerError(f"rspamd {self.url}: HTTP {status}: {body[:200]!r}")
        try:
            result = json.loads(body)
        except ValueError:
            raise ScannerError(f"rspamd {self.url}: answer is not JSON: {body[:200]!r}") from None
        if not isinstance(result, dict):
            raise ScannerError(f"rspamd {self.url}: answer is not a JSON object")
        action, score, symbols = result.get("action"), result.get("score"), result.get("symbols", {})
        if not isinstance(action, str):
            raise ScannerError(f"rspamd {self.url}: answer without an action")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ScannerError(f"rspamd {self.url}: answer without a numeric score")
        if not isinstance(symbols, dict):
            raise ScannerError(f"rspamd {self.url}: symbols is not an object")
        result["score"] = float(score)
        result["symbols"] = symbols
        return result

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session is bound to the loop it was made in (a new loop means a restarted app or a test).
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()


def _clean(text: str) -> str:
    return _UNSAFE.sub("", text)


async def _file_body(message: FileText) -> AsyncIterator[bytes]:
    for chunk in message.chunks():
        yield chunk


def _smtp_message(result: dict[str, Any]) -> str:
    """rspamd's ``messages.smtp_message`` made safe for one reply line ("" when absent)."""
    messages = result.get("messages")
    text = messages.get("smtp_message") if isinstance(messages, dict) else None
    if not isinstance(text, str):
        return ""
    text = " ".join(_clean(text).split())[:_MAX_REPLY_TEXT]
    return text.encode("ascii", "replace").decode("ascii")  # a reply line is ASCII (RFC 5321 §4.2)
