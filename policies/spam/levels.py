"""amavis-style spam thresholds shared by the spam scanners (``[spam_levels]``).

A scanner reports a score; the levels turn it into a verdict (amavisd-new
``$sa_tag_level_deflt``, ``$sa_tag2_level_deflt``, ``$sa_kill_level_deflt``):

* ``score >= kill_level``: REJECT ``550 5.7.1 Message rejected as spam``, or
  HOLD with ``kill_action = "hold"`` (reason ``spam``);
* ``score >= tag2_level``: CONTINUE, marked as spam: ``X-Spam-Flag: YES``,
  ``X-Spam-Score``, ``X-Spam-Status: Yes, ...`` and, when ``subject_tag`` is
  not empty, the Subject prefixed with it (amavis ``$sa_spam_subject_tag``);
* ``score >= tag_level``: CONTINUE with ``X-Spam-Flag: NO`` and the same
  score/status fields;
* below ``tag_level``: CONTINUE with no header.

Config keys (defaults): ``tag_level`` (2.0), ``tag2_level`` (6.2),
``kill_level`` (6.9), ``subject_tag`` (``"***SPAM*** "``; ``""`` = leave
the Subject alone), ``kill_action`` (``"reject"`` | ``"hold"``). The levels
must satisfy ``tag_level <= tag2_level <= kill_level``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from gateway import reply as replies
from gateway.config import Config
from gateway.errors import ConfigError
from gateway.message import field_name, raw_fields
from gateway.pipeline.section import Section
from gateway.verdict import CONTINUE, Action, HeaderEdit, Verdict

SECTION = "spam_levels"
KILL_ACTIONS = ("reject", "hold")

_KNOWN = {"tag_level", "tag2_level", "kill_level", "subject_tag", "kill_action"}
_TEST_NAME = re.compile(r"[^A-Za-z0-9_.:+-]")  # rule names are tokens; anything else is dropped
_FOLD_AT = 78  # RFC 5322 §2.1.1 recommended line length


@dataclass(frozen=True, slots=True)
class SpamLevels:
    """The validated ``[spam_levels]`` table; scores in the scanners' points."""

    tag_level: float = 2.0
    tag2_level: float = 6.2
    kill_level: float = 6.9
    subject_tag: str = "***SPAM*** "
    kill_action: str = "reject"

    @classmethod
    def from_config(cls, config: Config) -> SpamLevels:
        """Read and check ``[spam_levels]``.

        Raises:
            ConfigError: naming ``spam_levels.<key>`` for an unknown key, a value of the
                wrong type, a Subject tag with CR/LF, or levels out of order.
        """
        section = Section(SECTION, config.section(SECTION), _KNOWN)
        defaults = cls()
        levels = {
            key: cast(float, section.number(key, getattr(defaults, key)))
            for key in ("tag_level", "tag2_level", "kill_level")
        }
        subject_tag = section.text("subject_tag", defaults.subject_tag) or ""
        if "\r" in subject_tag or "\n" in subject_tag:
            raise ConfigError(section.key("subject_tag"), subject_tag, "a single-line string")
        kill_action = section.choice("kill_action", defaults.kill_action, KILL_ACTIONS)
        for low, high in (("tag_level", "tag2_level"), ("tag2_level", "kill_level")):
            low_value, high_value = levels[low], levels[high]
            if low_value > high_value:
                # Name the key the administrator set: with only the upper one given, that one is wrong.
                if high in section.table and low not in section.table:
                    raise ConfigError(section.key(high), high_value, f"at least {low} ({low_value:g})")
                raise ConfigError(section.key(low), low_value, f"at most {high} ({high_value:g})")
        return cls(
            tag_level=levels["tag_level"],
            tag2_level=levels["tag2_level"],
            kill_level=levels["kill_level"],
            subject_tag=subject_tag,
            kill_action=kill_action,
        )

    def verdict(self, *, engine: str, score: float, tests: Sequence[str], message: bytes) -> Verdict:
        """The verdict for ``score`` by the levels (see the module docstring).

        Args:
            engine: scanner name for ``X-Spam-Status`` and the log ("spamassassin", "rspamd").
            score: the scanner's score.
            tests: names of the rules that hit, in the scanner's order.
            message: the raw message (CRLF), read for its Subject.
        """
        score = _clean(score)
        detail = f"{engine} score={score:.3f} tests={','.join(_tokens(tests))}"
        if score >= self.kill_level:
            if self.kill_action == "hold":
                return Verdict(
                    Action.HOLD,
                    headers=self.spam_headers(engine=engine, score=score, tests=tests, message=message),
                    reason="spam",
                    detail=detail,
                )
            return Verdict(Action.REJECT, replies.SPAM_REJECTED, reason="spam", detail=detail)
        if score >= self.tag2_level:
            return Verdict(
                Action.CONTINUE,
                headers=self.spam_headers(engine=engine, score=score, tests=tests, message=message),
                reason="spam_tagged",
                detail=detail,
            )
        if score >= self.tag_level:
            return Verdict(
                Action.CONTINUE,
                headers=self.status_headers(engine=engine, score=score, tests=tests, spam=False),
                detail=detail,
            )
        return CONTINUE

    def status_headers(self, *, engine: str, score: float, tests: Sequence[str], spam: bool) -> HeaderEdit:
        """``X-Spam-Flag``, ``X-Spam-Score`` and ``X-Spam-Status`` (amavis names) without a Subject change."""
        score = _clean(score)
        status = (
            f"{'Yes' if spam else 'No'}, score={score:.3f} tag={self.tag_level:g} "
            f"tag2={self.tag2_level:g} kill={self.kill_level:g} engine={_token(engine)} "
            f"tests=[{', '.join(_tokens(tests))}]"
        )
        return HeaderEdit(
            prepend=(
                ("X-Spam-Flag", "YES" if spam else "NO"),
                ("X-Spam-Score", f"{score:.3f}"),
                ("X-Spam-Status", _fold("X-Spam-Status", status)),
            )
        )

    def spam_headers(
        self, *, engine: str, score: float, tests: Sequence[str], message: bytes, subject: str | None = None
    ) -> HeaderEdit:
        """The tag2 marking: status headers with ``Yes`` plus the Subject rewrite.

        ``subject`` (an ASCII value, e.g. rspamd's own ``subject``) replaces the Subject
        instead of ``subject_tag`` + the current Subject.
        """
        headers = self.status_headers(engine=engine, score=score, tests=tests, spam=True)
        if subject is None:
            if not self.subject_tag:
                return headers
            subject = tagged_subject(message, self.subject_tag)
        return HeaderEdit(prepend=headers.prepend, replace=(("Subject", subject),))


def tagged_subject(message: bytes, tag: str) -> str:
    """``tag`` + the message's current Subject value, with its folding and RFC 2047 words as they are.

    A message without a Subject gets ``tag`` alone (trailing blanks stripped).
    """
    for field in raw_fields(message):
        if field_name(field) == "subject":
            value = field.partition(b":")[2].rstrip(b"\r\n").lstrip(b" \t")
            current = value.decode("utf-8", "surrogateescape")
            return tag + current if current.strip() else tag.rstrip()
    return tag.rstrip()


def _clean(score: float) -> float:
    return float(score) + 0.0  # -0.0 (SpamAssassin prints it) becomes 0.0


def _token(text: str) -> str:
    return _TEST_NAME.sub("", text)


def _tokens(tests: Sequence[str]) -> list[str]:
    return [name for name in (_token(test) for test in tests) if name]


def _fold(name: str, value: str) -> str:
    """``value`` folded at its spaces so no line passes 78 characters (RFC 5322 §2.2.3).

    A fold is CRLF inserted before an existing space, so unfolding gives ``value`` back.
    """
    lines: list[str] = []
    current: str | None = None
    used = len(name) + 2  # the line so far, starting with "Name: "
    for word in value.split(" "):
        if current is None:
            current, used = word, used + len(word)
        elif used + 1 + len(word) > _FOLD_AT:
            lines.append(current)
            current, used = word, 1 + len(word)  # continuation lines start with the space
        else:
            current, used = f"{current} {word}", used + 1 + len(word)
    lines.append(current or "")
    return "\r\n ".join(lines)
