"""Postfix ``header_checks`` (header_checks(5)) with a ``regexp:`` rules file (regexp_table(5)).

Configuration (``[header_checks]``)::

    file = "/etc/gateway/header_checks"   # required; a leading "regexp:" is accepted
    timeout = "10s"                       # per message, applied by the pipeline
    on_error = "tempfail"                 # or "pass"; applied by the pipeline

Rules file, as Postfix reads it (``readlline``, ``dict_regexp``):

* blank lines and lines whose first non-blank character is ``#`` are skipped
  (so a rule cannot start with a ``#`` delimiter; ``!#pattern#`` works);
* a line starting with whitespace continues the previous logical line: it is
  appended verbatim, leading whitespace included, without the newline;
* ``/pattern/flags ACTION [text]`` and ``!/pattern/flags ACTION [text]``; any
  number of ``!`` (each toggles) may precede the pattern; the delimiter is any
  non-alphanumeric, non-blank character, ``\\<delimiter>`` inside the pattern
  does not end it; the legacy ``/pattern1/flags!/pattern2/flags ACTION`` form
  (pattern1 matches and pattern2 does not) is accepted too;
* ``if /pattern/flags`` ... ``endif`` (nesting, ``if !/pattern/``): the rules
  inside are consulted only when the same header line matches the condition;
* flags: ``i`` toggles case sensitivity (rules are case-INSENSITIVE by
  default, ``i`` makes them case-sensitive); ``m`` toggles POSIX REG_NEWLINE
  (``^``/``$`` at embedded line breaks) and has no effect on our unfolded
  lines; ``x`` (basic instead of extended regular expressions) is refused;
* ``$1``, ``${1}``, ``$(1)`` in the text are replaced by what that group
  matched (nothing when it did not take part), ``$$`` is a literal ``$``; a
  group number beyond the pattern's groups, a lone ``$`` or a ``$number`` in a
  negated rule is an error, as in Postfix.

Actions (case-insensitive; optional text after DUNNO, OK and IGNORE is ignored):

========================  ===============================================================
``REJECT [d.d.d] [text]`` ``550 <d.d.d or 5.7.1> <text or "message content rejected">``;
                          a 4.x.x or 2.x.x code is refused at load (Postfix would defer)
``DISCARD [text]``        Verdict DISCARD (client gets 250, nothing is queued)
``HOLD [text]``           Verdict HOLD (queued into the hold queue)
``IGNORE``                the header is deleted (``HeaderEdit.drop`` of its exact bytes)
``WARN [text]``           a WARNING log line with queue ID, header, client and envelope
``INFO [text]``           the same at INFO level
``PREPEND Name: value``   ``HeaderEdit.prepend``; the text must be a header field
``DUNNO``, ``OK``         no action for this header (and no further rules for it)
========================  ===============================================================

BCC, FILTER, REDIRECT, REPLACE and STRIP are Postfix actions this gateway does
not implement; they, unknown actions, bad patterns and syntax errors raise
:class:`~gateway.errors.ConfigError` with key ``header_checks.file`` and value
``"<path>:<line>"`` (the first line of the logical line).

Matching (per message, ``on_data``):

1. Each field of the top-level header section (:func:`gateway.message.raw_fields`;
   MIME part headers are ``mime_header_checks``' business) is checked in
   order. Items that are not fields (an mbox ``From `` line, a line without
   ``name:``) are skipped; the fields after them are still checked.
2. The subject is the field unfolded, ``Name: value`` (RFC 5322 §2.2.3 CRLF
   before WSP removed, the WSP kept), bytes decoded as UTF-8 with
   ``surrogateescape``, cut at 102400 characters (Postfix
   ``header_size_limit``). A pattern matches when ``re.search`` finds it
   anywhere (POSIX ``regexec``); a negated pattern matches when it is not found.
3. Rules are tried in file order; the first match decides for that header
   (like a Postfix table lookup); DUNNO/OK end the lookup with no action.
4. REJECT or DISCARD ends processing at once: later headers are not looked at
   and the verdict is returned (Postfix clears ``CLEANUP_FLAG_FILTER_ALL``).
   HOLD is remembered (the first one) and processing goes on, so a later
   REJECT or DISCARD still wins; at the end a remembered HOLD is returned with
   the edits collected so far. Otherwise the result is CONTINUE with the
   collected edits: IGNOREd fields to drop and PREPENDed fields, in header order.
5. Every verdict that results from an action has ``reason="header_checks"``
   and a ``detail`` naming the action, the (printable, shortened) header and
   the rule as ``path:line`` (several ``;``-separated for CONTINUE). When no
   rule acted (no match, or only DUNNO/OK) the shared CONTINUE is returned.

Where this differs from Postfix:

* Patterns are Python :mod:`re`, not POSIX ERE. To keep Postfix tables
  working, POSIX bracket classes (``[[:space:]]``) and the GNU word anchors
  ``\\<`` and ``\\>`` are translated; equivalence classes ``[=a=]`` and
  collating symbols ``[.a.]`` are refused. Remaining differences: a backslash
  inside ``[...]`` escapes (POSIX: literal); Python escapes (``\\d``, ``\\n``)
  and extensions (lazy quantifiers, look-around) are available; alternation is
  leftmost-first, not leftmost-longest, which can change what ``$n`` captures
  but never whether a rule matches.
* Postfix matches the logical line with its embedded newlines; we match it
  unfolded, so ``.*`` runs across folds and no pattern needs ``\\n``.
* PREPEND puts the new field at the top of the header section, not just
  before the matched field (``HeaderEdit.prepend``).
* Reply text is limited to printable ASCII (static text is checked at load;
  bytes substituted from the message become ``?``) and 400 characters.
* Matching runs on the event loop: Python's ``re`` holds the GIL, so a thread
  would not make a runaway pattern interruptible; keep patterns simple.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import ClassVar

from gateway import reply as replies
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.message import raw_fields, unfolded
from gateway.pipeline.policy import Policy, PolicyContext
from gateway.pipeline.section import ON_ERROR_CHOICES, Section
from gateway.reply import Reply
from gateway.verdict import CONTINUE, Action, HeaderEdit, Verdict
from policies.header_checks.rules import (
    BLANK,
    NOT_PRINTABLE,
    REPLY_TEXT_LIMIT,
    STATUS_PREFIX,
    Rule,
    parse_rules,
    prepend_field,
)

KEYS = {"file", "timeout", "on_error"}
DEFAULT_TIMEOUT = 60.0  # seconds; the pipeline's default for a policy hook
HEADER_SIZE_LIMIT = 102400  # characters matched per header (Postfix header_size_limit)
LOG_HEADER_LIMIT = 200  # characters of a header shown in logs (Postfix cleanup_act_log "%.200s")
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 ftext name, obs WSP before ':'


class HeaderChecks(Policy):
    """Postfix header_checks on the top-level header fields at DATA (see the module docstring).

    Attributes:
        path: the rules file.
        timeout: seconds the pipeline allows per hook call.
        on_error: ``"tempfail"`` or ``"pass"``, applied by the pipeline.
        rules: the loaded rules, in file order.

    Raises:
        ConfigError: on a bad ``[header_checks]`` value or rules file (``load``).
    """

    name: ClassVar[str] = "header_checks"

    def __init__(self, config: Config) -> None:
        section = Section(self.name, config.section(self.name), known=KEYS)
        file = section.text("file") or ""
        # Postfix main.cf spells the table "regexp:/path"; accept that as a plain path.
        file = file.removeprefix("regexp:")
        if not file:
            raise ConfigError(
                section.key("file"), section.table.get("file"), "the path of a Postfix regexp: table (required)"
            )
        self.path: Path = Path(file).expanduser()
        self.timeout: float = section.duration("timeout", DEFAULT_TIMEOUT)
        if self.timeout <= 0:
            raise ConfigError(
                section.key("timeout"), section.table.get("timeout"), "a duration greater than zero, such as 10s"
            )
        self.on_error: str = section.choice("on_error", "tempfail", ON_ERROR_CHOICES)
        self.rules: tuple[Rule, ...] = ()
        self.load()

    def load(self) -> int:
        """(Re)read and compile the rules file; return the number of rules.

        The new rules replace the old ones only when the whole file is valid, so
        a failed reload keeps the previous table in force. Messages already being
        checked finish with the table they started with.

        Raises:
            ConfigError: key ``header_checks.file``, value the path (unreadable file)
                or ``"<path>:<line>"`` (bad rule), and what is wrong.
        """
        try:
            # surrogateescape: a pattern may hold the same raw bytes a header carries.
            text = self.path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as error:
            raise ConfigError(
                f"{self.name}.file", str(self.path), f"a readable Postfix regexp: table ({error.strerror or error})"
            ) from None
        self.rules = parse_rules(text, str(self.path), f"{self.name}.file")
        return len(self.rules)

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        """Check each top-level header field of ``message`` (raw CRLF bytes); see the module docstring."""
        rules = self.rules  # one table per message, even if load() runs meanwhile
        if not rules:
            return CONTINUE
        drops: list[bytes] = []
        prepends: list[tuple[str, str]] = []
        details: list[str] = []
        hold: Verdict | None = None
        for raw in raw_fields(message):
            if not _FIELD_START.match(raw):
                continue
            header = unfolded(raw)[:HEADER_SIZE_LIMIT]
            found = _lookup(rules, header)
            if found is None:
                continue
            rule, match = found
            if rule.action in ("DUNNO", "OK"):
                continue
            text = rule.expand(match)
            where = f"{self.path}:{rule.line}"
            shown = _printable(header, LOG_HEADER_LIMIT)
            if rule.action == "REJECT":
                reply = rule.reply or _reject_reply(text)
                self._log(ctx, logging.INFO, "reject", shown, str(reply))
                return Verdict(Action.REJECT, reply, reason=self.name, detail=_detail("reject", shown, where, text))
            if rule.action == "DISCARD":
                self._log(ctx, logging.INFO, "discard", shown, text)
                return Verdict(Action.DISCARD, reason=self.name, detail=_detail("discard", shown, where, text))
            if rule.action == "HOLD":
                if hold is None:  # Postfix logs and keeps only the first HOLD
                    self._log(ctx, logging.INFO, "hold", shown, text)
                    hold = Verdict(Action.HOLD, reason=self.name, detail=_detail("hold", shown, where, text))
                continue
            if rule.action == "IGNORE":
                # The bytes exactly as apply_edits compares them (gateway.message._rewrite).
                drops.append(raw.rstrip(b"\r\n"))
            elif rule.action == "PREPEND":
                added = prepend_field(text)
                if added is None:
                    self._log(
                        ctx,
                        logging.WARNING,
                        "warning",
                        shown,
                        f"bad PREPEND header text {_printable(text, LOG_HEADER_LIMIT)!r} from rule"
                        f" {where}: need 'Name: value'; skipped",
                    )
                    continue
                prepends.append(added)
                self._log(ctx, logging.INFO, "prepend", shown, _printable(f"{added[0]}: {added[1]}", 200))
            elif rule.action == "WARN":
                self._log(ctx, logging.WARNING, "warning", shown, text)
            elif rule.action == "INFO":
                self._log(ctx, logging.INFO, "info", shown, text)
            details.append(_detail(rule.action.lower(), shown, where, text))
        edits = HeaderEdit(prepend=tuple(prepends), drop=tuple(drops))
        if hold is not None:
            return Verdict(Action.HOLD, headers=edits, reason=self.name, detail=hold.detail)
        if not details:
            return CONTINUE
        return Verdict(Action.CONTINUE, headers=edits, reason=self.name, detail="; ".join(details)[:1000])

    def _log(self, ctx: PolicyContext, level: int, what: str, header: str, text: str) -> None:
        # Postfix cleanup_act_log form, so existing log tooling recognises the lines.
        envelope = ctx.envelope
        sender = envelope.sender if envelope else ""
        recipients = ",".join(envelope.recipients) if envelope else ""
        ctx.log.log(
            level,
            "%s: %s: header %s from %s; from=<%s> to=<%s> helo=<%s>%s",
            ctx.queue_id or "NOQUEUE",
            what,
            header,
            ctx.client.describe(),
            _printable(sender, 200),
            _printable(recipients, 400),
            _printable(ctx.client.helo or "", 200),
            f": {_printable(text, 400)}" if text else "",
        )


def _lookup(rules: tuple[Rule, ...], header: str) -> tuple[Rule, re.Match[str] | bool] | None:
    """The first rule that applies to ``header`` with its match, or None."""
    guard_results: dict[int, bool] = {}
    for rule in rules:
        match = rule.matches(header, guard_results)
        if match is not False:
            return rule, match
    return None


def _detail(action: str, header: str, where: str, text: str) -> str:
    detail = f"{action}: header {header} (rule {where})"
    return f"{detail}: {_printable(text, 200)}" if text else detail


def _printable(text: str, limit: int) -> str:
    """``text`` for a log line: non-UTF-8 bytes as ``\\xNN``, controls as ``?``, cut at ``limit``."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = "".join("?" if (ch < " " or ch == "\x7f") else ch for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _reply_text(text: str) -> str:
    """Reply text from substituted message content: printable ASCII, one line, bounded."""
    text = NOT_PRINTABLE.sub("?", text.encode("utf-8", "surrogateescape").decode("ascii", "replace"))
    return text[:REPLY_TEXT_LIMIT]


def _reject_reply(text: str) -> Reply:
    """The 550 reply for a REJECT whose text was built from ``$n`` at match time."""
    status, rest = replies.CONTENT_REJECTED_STATUS, text.strip(BLANK)
    match = STATUS_PREFIX.fullmatch(rest)
    # A substituted code of the wrong class cannot be refused at load: keep it as text.
    if match and match.group(1) == "5":
        status, rest = f"5.{match.group(2)}.{match.group(3)}", (match.group(4) or "").strip(BLANK)
    return replies.content_rejected(status, _reply_text(rest))
