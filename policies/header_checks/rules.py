"""The header_checks rules file: Postfix regexp_table(5) lines, ``if``/``endif`` blocks and actions.

:func:`parse_rules` turns the file's text into :class:`Rule` objects, refusing
what Postfix would refuse (or what the gateway cannot do) with a
:class:`~gateway.errors.ConfigError` naming ``path:line``; the format is
described in :mod:`policies.header_checks`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

from gateway import reply as replies
from gateway.errors import ConfigError
from gateway.reply import Reply

REPLY_TEXT_LIMIT = 400  # characters; keeps "550 5.7.1 <text>" well under RFC 5321's 512
SUPPORTED_ACTIONS = ("REJECT", "DISCARD", "HOLD", "IGNORE", "WARN", "INFO", "PREPEND", "DUNNO", "OK")
UNSUPPORTED_ACTIONS = ("BCC", "FILTER", "REDIRECT", "REPLACE", "STRIP")
BLANK = " \t\v\f\r"  # C isspace() minus newline, as Postfix's ISSPACE sees a line
STATUS_PREFIX = re.compile(r"([0-9])\.([0-9]{1,3})\.([0-9]{1,3})(?:[ \t]+(.*))?", re.DOTALL)
_STATUS_HEAD = re.compile(r"([0-9])\.([0-9]{1,3})\.([0-9]{1,3})[ \t]")
_ACTION = re.compile(r"(\S+)[ \t\v\f\r]*(.*)", re.DOTALL)
_MACRO = re.compile(r"\$(?:(\$)|\{([^}]*)\}|\(([^)]*)\)|([A-Za-z0-9_]*))")
_IF = re.compile(r"if(?![A-Za-z0-9])", re.IGNORECASE)
_ENDIF = re.compile(r"endif(?![A-Za-z0-9])", re.IGNORECASE)
NOT_PRINTABLE = re.compile(r"[^ -~]")

# POSIX bracket classes in the C locale, as Python set contents.
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}
Template = tuple[str | int, ...]  # literal text and group numbers, in order
_HEADER_TEXT = re.compile(r"([!-9;-~]+)[ \t]*:[ \t]*(.*)", re.DOTALL)


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
    reply: Reply | None = field(default=None, compare=False)  # precomputed when the text is static

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
        return "".join(part if isinstance(part, str) else (match.group(part) or "") for part in self.template)


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
                if logical[5:].strip(BLANK):
                    raise _RuleSyntaxError(f"unexpected text after endif: {logical[5:].strip(BLANK)!r}")
                if not guards:
                    raise _RuleSyntaxError("endif without a matching if")
                guards.pop()
            elif _IF.match(logical):
                pattern, rest = _parse_pattern(logical[2:])
                if rest.strip(BLANK):
                    raise _RuleSyntaxError(
                        f"unexpected text after the if condition: {rest.strip(BLANK)!r}"
                        " (rules inside if/endif must not be indented)"
                    )
                guards.append((line_no, pattern))
            elif logical[0].isalnum():
                raise _RuleSyntaxError(
                    "a rule must start with a pattern delimiter such as '/' (or be 'if /pattern/' or 'endif')"
                )
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
        stripped = line.strip(BLANK)
        if not stripped or stripped.startswith("#"):
            continue  # does not end a logical line, as in readlline
        if line[0] in BLANK:
            if not result:
                raise ConfigError(
                    key, f"{origin}:{number}", "a continuation line (starting with whitespace) with no rule before it"
                )
            first, previous = result[-1]
            result[-1] = (first, previous + line)
        else:
            result.append((number, line))
    return [(number, line.rstrip(BLANK)) for number, line in result]


def _parse_rule(logical: str, line_no: int, guards: tuple[_Pattern, ...]) -> Rule:
    pattern, rest = _parse_pattern(logical)
    unless: _Pattern | None = None
    if rest.startswith("!"):  # legacy /pattern1/!/pattern2/: pattern1 and not pattern2
        second, rest = _parse_pattern(rest)
        unless = _Pattern(second.regex, not second.negated)
    parsed = _ACTION.fullmatch(rest.lstrip(BLANK))
    if parsed is None:
        raise _RuleSyntaxError("no action after the pattern")
    action_word, text = parsed.group(1), parsed.group(2)
    action = action_word.upper()
    if action in UNSUPPORTED_ACTIONS:
        raise _RuleSyntaxError(
            f"Postfix action {action} is not supported by this gateway (supported: {', '.join(SUPPORTED_ACTIONS)})"
        )
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
    while i < len(text) and (text[i] == "!" or text[i] in BLANK):
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
    while i < len(text) and text[i] not in BLANK and text[i] != "!":
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
            out.append(r"\b(?=\w)" if following == "<" else r"\b(?<=\w)" if following == ">" else pattern[i : i + 2])
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
        if i < n and pattern[i] == "]":  # a leading ']' is literal in POSIX
            out.append(r"\]")
            i += 1
        while i < n and pattern[i] != "]":
            if pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2 : end] if end >= 0 else ""
                if name not in _POSIX_CLASSES:
                    raise ValueError(f"unknown character class [:{name}:]")
                out.append(_POSIX_CLASSES[name])
                i = end + 2
            elif pattern.startswith(("[=", "[."), i):
                raise ValueError("equivalence classes [=x=] and collating symbols [.x.] are not supported")
            elif pattern[i] == "\\" and i + 1 < n:
                out.append(pattern[i : i + 2])
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
        parts.append(text[position : macro.start()])
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
    head = first.strip(BLANK)
    static = all(isinstance(part, str) for part in template)
    # Postfix dsn_prepend: a leading d.d.d followed by a blank (or the end) is the status.
    code = STATUS_PREFIX.fullmatch(head) if static else _STATUS_HEAD.match(first.lstrip(BLANK))
    if code and code.group(1) != "5":
        status = ".".join(code.group(n) for n in (1, 2, 3))
        raise _RuleSyntaxError(f"REJECT needs a 5.x.x status code, not {status} (a reject is a permanent 550)")
    if not static:
        return None
    status, text = replies.CONTENT_REJECTED_STATUS, head
    if code:
        status, text = ".".join(code.group(n) for n in (1, 2, 3)), (code.group(4) or "").strip(BLANK)
    if NOT_PRINTABLE.search(text):
        raise _RuleSyntaxError(f"REJECT text {text!r} must be printable ASCII (it is sent to the client)")
    if len(text) > REPLY_TEXT_LIMIT:
        raise _RuleSyntaxError(f"REJECT text is longer than {REPLY_TEXT_LIMIT} characters")
    return replies.content_rejected(status, text)


def _check_prepend(template: Template) -> None:
    """PREPEND needs ``Name: value``; checked now when the text is static, else at match time."""
    if not template:
        raise _RuleSyntaxError("PREPEND needs a header field as text, e.g. 'PREPEND X-Checked: yes'")
    if all(isinstance(part, str) for part in template) and prepend_field(str(template[0])) is None:
        raise _RuleSyntaxError(f"PREPEND text {template[0]!r} is not a header field 'Name: value'")


def prepend_field(text: str) -> tuple[str, str] | None:
    """``(name, value)`` from PREPEND text ``Name: value``, or None when it is not a header field."""
    match = _HEADER_TEXT.fullmatch(text.strip(BLANK))
    if not match:
        return None
    # A value from $n may hold CR/LF from an odd header: never let it start a new field.
    return match.group(1), re.sub(r"[\r\n]+", " ", match.group(2))
