"""The DSN parameters of MAIL and RCPT (RFC 3461): read, checked and taken out before aiosmtpd sees them.

aiosmtpd answers ``555`` to every MAIL or RCPT parameter it does not know and
upper-cases them; here ``RET`` and ``ENVID`` (MAIL) and ``NOTIFY`` and ``ORCPT``
(RCPT) are taken out of the command first, with their keywords matched without
regard to case and their values kept as sent (xtext decoded, RFC 3461 §4):

* ``RET=FULL|HDRS``;
* ``ENVID=<xtext>``, at most 100 characters;
* ``NOTIFY=NEVER`` or a comma list of ``SUCCESS``, ``FAILURE``, ``DELAY``;
* ``ORCPT=<addr-type>;<xtext>``, e.g. ``rfc822;user+40example.com``.

A malformed or repeated one gets ``501 5.5.4`` (RFC 3461 §4: "Invalid parameter").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from gateway import reply as replies
from gateway.reply import Reply

MAIL_PARAMETERS = ("RET", "ENVID")
RCPT_PARAMETERS = ("NOTIFY", "ORCPT")
NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")  # RFC 3461 §4: xchar (33-126 but + and =) or +HEX
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# a cheap test before any parsing: most commands carry none of them
NAMED: dict[tuple[str, ...], re.Pattern[str]] = {
    names: re.compile(r"[ \t](?:" + "|".join(names) + r")=", re.IGNORECASE)
    for names in (MAIL_PARAMETERS, RCPT_PARAMETERS)
}


class ParameterError(ValueError):
    """A DSN parameter that cannot be taken; ``reply`` is the 501 to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class DsnRequest:
    """What the client asked of DSNs for a transaction or one recipient (None: not given).

    Attributes:
        ret: ``FULL`` or ``HDRS`` (MAIL). envid: the envelope identifier, decoded (MAIL).
        notify: ``("NEVER",)`` or some of :data:`NOTIFY_WORDS` (RCPT).
        orcpt: ``"<addr-type>;<address>"`` with the address decoded (RCPT).
    """

    ret: str | None = None
    envid: str | None = None
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


NOT_ASKED = DsnRequest()


def xtext_decode(text: str) -> str:
    """RFC 3461 §4 xtext to text: ``+HH`` is the octet HH.

    Raises:
        ValueError: ``text`` is not xtext.
    """
    if not _XTEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not xtext")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def split_off(
    arg: str | None, keyword: str, names: tuple[str, ...], getaddr: Callable[[str], tuple[str | None, str | None]]
) -> tuple[str | None, DsnRequest]:
    """``arg`` of MAIL (``keyword`` ``"FROM:"``) or RCPT (``"TO:"``) without the parameters ``names``, and what
    they asked; ``arg`` unchanged when it has none, or when its path is malformed (aiosmtpd answers that).

    ``getaddr`` is the protocol's address splitter (aiosmtpd's ``_getaddr``): ``(address, parameter part)``.

    Raises:
        ParameterError: a malformed or repeated parameter.
    """
    if not arg or not NAMED[names].search(arg) or arg[: len(keyword)].upper() != keyword:
        return arg, NOT_ASKED
    rest = getaddr(arg[len(keyword) :].strip())[1]
    if not rest or not arg.endswith(rest):
        return arg, NOT_ASKED
    return take(arg, rest, names)


def take(arg: str, rest: str, names: tuple[str, ...]) -> tuple[str, DsnRequest]:
    """Take the parameters ``names`` out of a MAIL/RCPT argument.

    Args:
        arg: the whole argument (``FROM:<a@b> RET=HDRS SIZE=10``).
        rest: its parameter part, as aiosmtpd's ``_getaddr`` returned it (a tail of ``arg``).
        names: :data:`MAIL_PARAMETERS` or :data:`RCPT_PARAMETERS`.

    Returns:
        ``arg`` without them (the other parameters left for aiosmtpd), and what they asked.

    Raises:
        ParameterError: a malformed or repeated parameter.
    """
    assert arg.endswith(rest), "rest is the tail of arg"
    head = arg[: len(arg) - len(rest)]
    kept, found = [], {}
    for token in rest.split():
        name, equals, value = token.partition("=")
        keyword = name.upper()
        if keyword not in names:
            kept.append(token)
            continue
        if keyword in found or not equals:
            raise ParameterError(replies.bad_dsn_parameter(token))
        found[keyword] = _checked(keyword, value, token)
    request = DsnRequest(
        ret=found.get("RET"),
        envid=found.get("ENVID"),
        notify=tuple(found["NOTIFY"].split(",")) if "NOTIFY" in found else None,
        orcpt=found.get("ORCPT"),
    )
    return (head.rstrip() + (" " + " ".join(kept) if kept else "")).rstrip(), request


def _checked(keyword: str, value: str, token: str) -> str:
    """The value of one parameter as stored (upper-cased words, decoded xtext), or ParameterError."""
    try:
        if keyword == "RET":
            if value.upper() not in ("FULL", "HDRS"):
                raise ValueError("RET is FULL or HDRS")
            return value.upper()
        if keyword == "NOTIFY":
            words = [word.upper() for word in value.split(",")]
            if words != ["NEVER"] and (
                not words or len(set(words)) != len(words) or not set(words) <= set(NOTIFY_WORDS)
            ):
                raise ValueError("NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY")
            return ",".join(words)
        if keyword == "ENVID":
            envid = xtext_decode(value)
            if not envid or len(envid) > 100 or not envid.isprintable() or not envid.isascii():
                raise ValueError("ENVID is 1 to 100 printable ASCII characters")
            return envid
        addr_type, semicolon, address = value.partition(";")
        decoded = xtext_decode(address)
        if (
            not semicolon
            or not _ADDR_TYPE.fullmatch(addr_type)
            or not decoded
            or len(decoded) > 500
            or not decoded.isprintable()
        ):
            raise ValueError("ORCPT is addr-type;xtext")
        return f"{addr_type.lower()};{decoded}"
    except ValueError:
        raise ParameterError(replies.bad_dsn_parameter(token)) from None
