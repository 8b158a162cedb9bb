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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.message import raw_fields, unfolded
from gateway.pipeline.policy import Policy, PolicyContext
from gateway.reply import Reply
from gateway.pipeline.section import ON_ERROR_CHOICES, Section
from gateway.verdict import CONTINUE, Action, HeaderEdit, Verdict

KEYS = {"file", "timeout", "on_error"}
DEFAULT_TIMEOUT = 60.0          # seconds; the pipeline's default for a policy hook
HEADER_SIZE_LIMIT = 102400      # characters matched per header (Postfix header_size_limit)
REPLY_TEXT_LIMIT = 400          # characters; keeps "550 5.7.1 <text>" well under RFC 5321's 512
LOG_HEADER_LIMIT = 200          # characters of a header shown in logs (Postfix cleanup_act_log "%.200s")
DEFAULT_REJECT_STATUS = "5.7.1"
DEFAULT_REJECT_TEXT = "message content rejected"   # Postfix CLEANUP_STAT_CONT

SUPPORTED_ACTIONS = ("REJECT", "DISCARD", "HOLD", "IGNORE", "WARN", "INFO", "PREPEND", "DUNNO", "OK")
UNSUPPORTED_ACTIONS = ("BCC", "FILTER", "REDIRECT", "REPLACE", "STRIP")

_BLANK = " \t\v\f\r"            # C isspace() minus newline, as Postfix's ISSPACE sees a line
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")          # RFC 5322 ftext name, obs WSP before ':'
_HEADER_TEXT = re.compile(r"([!-9;-~]+)[ \t]*:[ \t]*(.*)", re.DOTALL)
_STATUS_PREFIX = re.compile(r"([0-9])\.([0-9]{1,3})\.([0-9]{1,3})(?:[ \t]+(.*))?", re.DOTALL)
_STATUS_HEAD = re.compile(r"([0-9])\.([0-9]{1,3})\.([0-9]{1,3})[ \t]")
_ACTION = re.compile(r"(\S+)[ \t\v\f\r]*(.*)", re.DOTALL)
_MACRO = re.compile(r"\$(?:(\$)|\{([^}]*)\}|\(([^)]*)\)|([A-Za-z0-9_]*))")
_IF = re.compile(r"if(?![A-Za-z0-9])", re.IGNORECASE)
_ENDIF = re.compile(r"endif(?![A-Za-z0-9])", re.IGNORECASE)
_NOT_PRINTABLE = re.compile(r"[^ -~]")

# POSIX bracket classes in the C locale, as Python set contents.
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v", "upper": "A-Z", "xdigit": "0-9A-Fa-f",
}

Template = tuple[str | int, ...]   # literal text and group numbers, in order


class _RuleSyntaxError(ValueError):
    """A problem in one logical line; turned into a ConfigError with path:line."""


@dataclass(frozen=True, slots=True)
class _Pattern:
    """One compiled ``/pattern/flags``, possibly negated."""

    regex: re.Pattern[str]
    negated: bool

    def test(self, text: str) -> re.Match[str] | bool:
        """The match object (positive pattern), True (negated and not found), or False."""
        found = self.regex.search(text)
        if self.negated:
            return found is None
        return found if found is not None else False


@dataclass(frozen=True, slots=True)
class Rule:
    """One match rule of the table.

    line: first line number of the logical line in the file.
    action: the upper-case action keyword.
    template: the text after the action, split into literals and ``$n`` group numbers.
    guards: enclosing ``if`` conditions, outermost first.
    """

    line: int
    pattern: _Pattern
    unless: _Pattern | None
    action: str
    template: Template
    guards: tuple[_Pattern, ...] = ()
    reply: Reply | None = field(default=None, compare=False)   # precomputed when the text is static

    def matches(self, text: str, guard_results: dict[int, bool]) -> re.Match[str] | bool:
        """The match object (True for a negated rule) when this rule applies to ``text``, else False.

        ``guard_results`` caches the ``if`` conditions for this ``text`` (by ``id``), so a
        failed ``if`` costs one search however many rules it encloses (Postfix jumps to ``endif``).
        """
        for guard in self.guards:
            known = guard_results.get(id(guard))
            if known is None:
                known = guard_results[id(guard)] = bool(guard.test(text))
            if not known:
                return False
        found = self.pattern.test(text)
        if not found:
            return False
        if self.unless is not None and self.unless.test(text):
            return False
        return found

    def expand(self, match: re.Match[str] | bool) -> str:
        """The action text with ``$n`` replaced by the matched groups (regexp_table(5))."""
        if not isinstance(match, re.Match):
            # Negated rules cannot hold $n (refused at load), so only literals remain.
            return "".join(part for part in self.template if isinstance(part, str))
        return "".join(part if isinstance(part, str) else (match.group(part) or "")
                       for part in self.template)


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
            raise ConfigError(section.key("file"), section.table.get("file"),
                              "the path of a Postfix regexp: table (required)")
        self.path: Path = Path(file).expanduser()
        self.timeout: float = section.duration("timeout", DEFAULT_TIMEOUT)
        if self.timeout <= 0:
            raise ConfigError(section.key("timeout"), section.table.get("timeout"),
                              "a duration greater than zero, such as 10s")
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
            raise ConfigError(f"{self.name}.file", str(self.path),
                              f"a readable Postfix regexp: table ({error.strerror or error})") from None
        self.rules = parse_rules(text, str(self.path), f"{self.name}.file")
        return len(self.rules)

    async def on_data(self, ctx: PolicyContext, message: bytes) -> Verdict:
        """Check each top-level header field of ``message`` (raw CRLF bytes); see the module docstring."""
        rules = self.rules   # one table per message, even if load() runs meanwhile
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
                return Verdict(Action.REJECT, reply, reason=self.name,
                               detail=_detail("reject", shown, where, text))
            if rule.action == "DISCARD":
                self._log(ctx, logging.INFO, "discard", shown, text)
                return Verdict(Action.DISCARD, reason=self.name, detail=_detail("discard", shown, where, text))
            if rule.action == "HOLD":
                if hold is None:   # Postfix logs and keeps only the first HOLD
                    self._log(ctx, logging.INFO, "hold", shown, text)
                    hold = Verdict(Action.HOLD, reason=self.name, detail=_detail("hold", shown, where, text))
                continue
            if rule.action == "IGNORE":
                # The bytes exactly as apply_edits compares them (gateway.message._rewrite).
                drops.append(raw.rstrip(b"\r\n"))
            elif rule.action == "PREPEND":
                added = _prepend_field(text)
                if added is None:
                    self._log(ctx, logging.WARNING, "warning", shown,
                              f"bad PREPEND header text {_printable(text, LOG_HEADER_LIMIT)!r} from rule"
                              f" {where}: need 'Name: value'; skipped")
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
        ctx.log.log(level, "%s: %s: header %s from %s; from=<%s> to=<%s> helo=<%s>%s",
                    ctx.queue_id or "NOQUEUE", what, header, ctx.client.describe(),
                    _printable(sender, 200), _printable(recipients, 400), _printable(ctx.client.helo or "", 200),
                    f": {_printable(text, 400)}" if text else "")


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
    text = _NOT_PRINTABLE.sub("?", text.encode("utf-8", "surrogateescape").decode("ascii", "replace"))
    return text[:REPLY_TEXT_LIMIT]


def _reject_reply(text: str) -> Reply:
    """The 550 reply for a REJECT whose text was built from ``$n`` at match time."""
    status, rest = DEFAULT_REJECT_STATUS, text.strip(_BLANK)
    match = _STATUS_PREFIX.fullmatch(rest)
    # A substituted code of the wrong class cannot be refused at load: keep it as text.
    if match and match.group(1) == "5":
        status, rest = f"5.{match.group(2)}.{match.group(3)}", (match.group(4) or "").strip(_BLANK)
    return Reply(550, status, _reply_text(rest) or DEFAULT_REJECT_TEXT)


def _prepend_field(text: str) -> tuple[str, str] | None:
    """``(name, value)`` from PREPEND text ``Name: value``, or None when it is not a header field."""
    match = _HEADER_TEXT.fullmatch(text.strip(_BLANK))
    if not match:
        return None
    # A value from $n may hold CR/LF from an odd header: never let it start a new field.
    return match.group(1), re.sub(r"[\r\n]+", " ", match.group(2))


# ---- parsing the table ----------------------------------------------------------------


def parse_rules(text: str, origin: str, key: str = "header_checks.file") -> tuple[Rule, ...]:
    """Compile a Postfix ``regexp:`` table for header_checks.

    Args:
        text: the file contents (str; undecodable bytes as surrogates).
        origin: the file name used in error values (``"<origin>:<line>"``).
        key: the config key named in errors.

    Returns:
        The match rules in file order, each carrying its enclosing ``if`` conditions.

    Raises:
        ConfigError: on the first bad logical line, or an ``if`` without ``endif``.
    """
    rules: list[Rule] = []
    guards: list[tuple[int, _Pattern]] = []
    for line_no, logical in _logical_lines(text, origin, key):
        try:
            if _ENDIF.match(logical):
                if logical[5:].strip(_BLANK):
                    raise _RuleSyntaxError(f"unexpected text after endif: {logical[5:].strip(_BLANK)!r}")
                if not guards:
                    raise _RuleSyntaxError("endif without a matching if")
                guards.pop()
            elif _IF.match(logical):
                pattern, rest = _parse_pattern(logical[2:])
                if rest.strip(_BLANK):
                    raise _RuleSyntaxError(f"unexpected text after the if condition: {rest.strip(_BLANK)!r}"
                                           " (rules inside if/endif must not be indented)")
                guards.append((line_no, pattern))
            elif logical[0].isalnum():
                raise _RuleSyntaxError("a rule must start with a pattern delimiter such as '/' "
                                       "(or be 'if /pattern/' or 'endif')")
            else:
                rules.append(_parse_rule(logical, line_no, tuple(g for _, g in guards)))
        except _RuleSyntaxError as error:
            raise ConfigError(key, f"{origin}:{line_no}", str(error)) from None
    if guards:
        raise ConfigError(key, f"{origin}:{guards[-1][0]}", "if without a matching endif")
    return tuple(rules)


def _logical_lines(text: str, origin: str, key: str) -> list[tuple[int, str]]:
    """Postfix ``readlline``: drop comments and blank lines, join continuation lines.

    Returns ``(first line number, logical line)`` pairs, trailing blanks removed.
    """
    result: list[tuple[int, str]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        stripped = line.strip(_BLANK)
        if not stripped or stripped.startswith("#"):
            continue   # does not end a logical line, as in readlline
        if line[0] in _BLANK:
            if not result:
                raise ConfigError(key, f"{origin}:{number}",
                                  "a continuation line (starting with whitespace) with no rule before it")
            first, previous = result[-1]
            result[-1] = (first, previous + line)
        else:
            result.append((number, line))
    return [(number, line.rstrip(_BLANK)) for number, line in result]


def _parse_rule(logical: str, line_no: int, guards: tuple[_Pattern, ...]) -> Rule:
    pattern, rest = _parse_pattern(logical)
    unless: _Pattern | None = None
    if rest.startswith("!"):   # legacy /pattern1/!/pattern2/: pattern1 and not pattern2
        second, rest = _parse_pattern(rest)
        unless = _Pattern(second.regex, not second.negated)
    parsed = _ACTION.fullmatch(rest.lstrip(_BLANK))
    if parsed is None:
        raise _RuleSyntaxError("no action after the pattern")
    action_word, text = parsed.group(1), parsed.group(2)
    action = action_word.upper()
    if action in UNSUPPORTED_ACTIONS:
        raise _RuleSyntaxError(f"Postfix action {action} is not supported by this gateway "
                               f"(supported: {', '.join(SUPPORTED_ACTIONS)})")
    if action not in SUPPORTED_ACTIONS:
        raise _RuleSyntaxError(f"unknown action {action_word!r} (supported: {', '.join(SUPPORTED_ACTIONS)})")
    template = _parse_template(text) if action not in ("IGNORE", "DUNNO", "OK") else ()
    groups = [part for part in template if isinstance(part, int)]
    if groups and pattern.negated:
        raise _RuleSyntaxError("$number in the text of a negated rule (there is no match to take it from)")
    if groups and max(groups) > pattern.regex.groups:
        raise _RuleSyntaxError(f"${max(groups)} but the pattern has only {pattern.regex.groups} group(s)")
    reply = None
    if action == "REJECT":
        reply = _check_reject(template)
    elif action == "PREPEND":
        _check_prepend(template)
    return Rule(line_no, pattern, unless, action, template, guards, reply)


def _parse_pattern(text: str) -> tuple[_Pattern, str]:
    """Parse ``[!...]<d>pattern<d>flags`` at the start of ``text``; return it and the rest.

    Follows Postfix ``dict_regexp_get_pat``: ``!`` and blanks before the
    delimiter, backslash escapes the next character, flags run up to a blank or ``!``.
    """
    negated, i = False, 0
    while i < len(text) and (text[i] == "!" or text[i] in _BLANK):
        negated = negated if text[i] != "!" else not negated
        i += 1
    if i >= len(text):
        raise _RuleSyntaxError("no pattern")
    delimiter = text[i]
    if delimiter.isalnum() or delimiter == "\\":
        raise _RuleSyntaxError(f"pattern delimiter {delimiter!r} must be a non-alphanumeric character")
    start = i = i + 1
    while i < len(text) and text[i] != delimiter:
        i += 2 if text[i] == "\\" else 1
    if i >= len(text):
        raise _RuleSyntaxError(f"no closing pattern delimiter {delimiter!r}")
    source, i = text[start:i], i + 1
    ignore_case, newline = True, False
    while i < len(text) and text[i] not in _BLANK and text[i] != "!":
        flag = text[i]
        if flag == "i":
            ignore_case = not ignore_case
        elif flag == "m":
            newline = not newline
        elif flag == "x":
            # Toggling off REG_EXTENDED means POSIX basic syntax, which re cannot read.
            raise _RuleSyntaxError("flag 'x' (POSIX basic regular expressions) is not supported")
        else:
            raise _RuleSyntaxError(f"unknown pattern flag {flag!r} (allowed: i, m)")
        i += 1
    # Without REG_NEWLINE '.' matches a newline and ^/$ only anchor at the ends (POSIX).
    flags = (re.IGNORECASE if ignore_case else 0) | (re.MULTILINE if newline else re.DOTALL)
    try:
        translated = _translate(source)
        with warnings.catch_warnings():
            # "Possible nested set" FutureWarnings are about future re versions, not errors.
            warnings.simplefilter("ignore", FutureWarning)
            regex = re.compile(translated, flags)
    except (re.error, ValueError) as error:
        raise _RuleSyntaxError(f"bad regular expression {delimiter}{source}{delimiter}: {error}") from None
    return _Pattern(regex, negated), text[i:]


def _translate(pattern: str) -> str:
    """POSIX ERE bits that Python's re reads differently: ``[[:class:]]``, ``\\<``, ``\\>``.

    Raises:
        ValueError: on an unknown class, an equivalence class or a collating symbol.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            following = pattern[i + 1]
            out.append(r"\b(?=\w)" if following == "<" else r"\b(?<=\w)" if following == ">"
                       else pattern[i:i + 2])
            i += 2
            continue
        if ch != "[":
            out.append(ch)
            i += 1
            continue
        out.append("[")
        i += 1
        if i < n and pattern[i] == "^":
            out.append("^")
            i += 1
        if i < n and pattern[i] == "]":   # a leading ']' is literal in POSIX
            out.append(r"\]")
            i += 1
        while i < n and pattern[i] != "]":
            if pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2:end] if end >= 0 else ""
                if name not in _POSIX_CLASSES:
                    raise ValueError(f"unknown character class [:{name}:]")
                out.append(_POSIX_CLASSES[name])
                i = end + 2
            elif pattern.startswith(("[=", "[."), i):
                raise ValueError("equivalence classes [=x=] and collating symbols [.x.] are not supported")
            elif pattern[i] == "\\" and i + 1 < n:
                out.append(pattern[i:i + 2])
                i += 2
            else:
                out.append(r"\[" if pattern[i] == "[" else pattern[i])
                i += 1
        if i < n:
            out.append("]")
            i += 1
    return "".join(out)


def _parse_template(text: str) -> Template:
    """Split action text into literals and ``$n`` group numbers (Postfix ``mac_parse``)."""
    parts: list[str | int] = []
    position = 0
    for macro in _MACRO.finditer(text):
        parts.append(text[position:macro.start()])
        position = macro.end()
        if macro.group(1):
            parts.append("$")
            continue
        name = next((g for g in macro.groups()[1:] if g is not None), "")
        if not name:
            raise _RuleSyntaxError(f"'$' not followed by a group number in {text!r} (write $$ for a literal $)")
        if not (name.isascii() and name.isdigit()):
            raise _RuleSyntaxError(f"non-numeric replacement ${name} in {text!r} (use ${{1}} before letters)")
        if int(name) < 1:
            raise _RuleSyntaxError(f"replacement index ${name} is out of range (groups start at $1)")
        parts.append(int(name))
    parts.append(text[position:])
    merged: list[str | int] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    return tuple(merged)


def _check_reject(template: Template) -> Reply | None:
    """Validate REJECT text; return the Reply when the text is static (no ``$n``).

    Raises:
        _RuleSyntaxError: on a status code whose class is not 5, or static text
            that is not printable ASCII or too long.
    """
    first = template[0] if template and isinstance(template[0], str) else ""
    head = first.strip(_BLANK)
    static = all(isinstance(part, str) for part in template)
    # Postfix dsn_prepend: a leading d.d.d followed by a blank (or the end) is the status.
    code = _STATUS_PREFIX.fullmatch(head) if static else _STATUS_HEAD.match(first.lstrip(_BLANK))
    if code and code.group(1) != "5":
        status = ".".join(code.group(n) for n in (1, 2, 3))
        raise _RuleSyntaxError(f"REJECT needs a 5.x.x status code, not {status} (a reject is a permanent 550)")
    if not static:
        return None
    status, text = DEFAULT_REJECT_STATUS, head
    if code:
        status, text = ".".join(code.group(n) for n in (1, 2, 3)), (code.group(4) or "").strip(_BLANK)
    if _NOT_PRINTABLE.search(text):
        raise _RuleSyntaxError(f"REJECT text {text!r} must be printable ASCII (it is sent to the client)")
    if len(text) > REPLY_TEXT_LIMIT:
        raise _RuleSyntaxError(f"REJECT text is longer than {REPLY_TEXT_LIMIT} characters")
    return Reply(550, status, text or DEFAULT_REJECT_TEXT)


def _check_prepend(template: Template) -> None:
    """PREPEND needs ``Name: value``; checked now when the text is static, else at match time."""
    if not template:
        raise _RuleSyntaxError("PREPEND needs a header field as text, e.g. 'PREPEND X-Checked: yes'")
    if all(isinstance(part, str) for part in template) and _prepend_field(str(template[0])) is None:
        raise _RuleSyntaxError(f"PREPEND text {template[0]!r} is not a header field 'Name: value'")
