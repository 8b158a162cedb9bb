"""MAIL FROM / RCPT TO paths split into address and parameters: aiosmtpd's results, by one regex for the common shapes.

aiosmtpd's ``SMTP._getaddr`` runs ``email._header_value_parser`` (a ``typing.Protocol``
class and a token tree per call); :func:`split_path` gives exactly its results
(tests/unit/smtpd/test_fast_getaddr.py compares them on generated input) and hands
every shape it does not know to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The fast path. What email._header_value_parser (used by aiosmtpd's
# _getaddr) takes as atext is anything but its ATOM_ENDS (specials, space, tab);
# the fast path also leaves out every str.isspace() character (Domain.domain
# drops them from the domain) and, to stay on the plain side, ASCII controls, so
# the parser would return a match unchanged. A dot-atom starting with "=?" would
# be tried as an RFC 2047 encoded word: left to the parser too.
_ATEXT = r'[^\x00-\x20\x7f()<>@,:;.\\"\[\]\s]+'
_DOT_ATOM = rf"(?!=\?){_ATEXT}(?:\.{_ATEXT})*"
_ADDR_SPEC = rf"{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[A-Za-z0-9.:-]+\])"
_ANGLE_ADDR = re.compile(rf"<({_ADDR_SPEC})>")
_BARE_ADDR = re.compile(_ADDR_SPEC)


def split_path(
    arg: str, local_part_limit: int, slow: Callable[[str], tuple[str | None, str | None]]
) -> tuple[str | None, str | None]:
    """Split ``<local@domain> params`` into the address and the rest.

    Same results as aiosmtpd's ``SMTP._getaddr`` (``slow``) for every input
    (address None when malformed, ``("<>", rest)`` for the null path, ``("", "")``
    for an empty argument); only ``<dot-atom@dot-atom-or-[literal]>`` and the same
    without brackets, with parameters or nothing after them, are handled here,
    everything else by ``slow``. ``local_part_limit``: aiosmtpd's (0: none).
    """
    if not arg:
        return "", ""
    if arg[0] == "<":
        if arg[1:2] == ">":
            # get_angle_addr returns right after "<>", without reading the CFWS after it.
            return "<>", arg[2:]
        match = _ANGLE_ADDR.match(arg)
        if match is None:
            return slow(arg)
        address = match.group(1)
        rest = arg[match.end() :]
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()  # get_fws strips all whitespace once started by space or tab
        if rest[:1] == "(":
            return slow(arg)  # a comment
    else:
        match = _BARE_ADDR.match(arg)
        if match is None:
            return slow(arg)
        address = match.group()
        rest = arg[match.end() :]
        if rest:
            # Only whitespace ends the bare dot-atom here: other characters may
            # still be atext to the parser, or make it read on ("." obs-domain,
            # "@" error, "(" comment).
            if rest[0] not in (" ", "\t"):
                return slow(arg)
            rest = rest.lstrip()
            if rest[:1] in ("(", ".", "@"):
                return slow(arg)
    if local_part_limit and len(address.rpartition("@")[0]) > local_part_limit:
        return None, None
    return address, rest
