"""Logging set-up: Postfix-like text lines or JSON lines, on standard error.

Text lines follow Postfix's maillog: ``TIME NAME[PID]: MESSAGE``, with
``warning:``, ``error:`` or ``debug:`` before the message for those levels and
nothing for info, so that log readers written for Postfix (fail2ban's
``postfix`` filter) read them. Every message goes through
:func:`gateway.safe_text.printable` before it is written, whatever the format:
addresses, HELO names, header values and next hops' replies come from the
network, and a control character in them could forge a line break, move a
terminal's cursor or hide text. JSON lines are ASCII (``ensure_ascii``).
"""

from __future__ import annotations

import json
import logging
import sys
import time

from gateway.safe_text import printable

_LEVEL_PREFIX = {logging.DEBUG: "debug: ", logging.WARNING: "warning: ", logging.ERROR: "error: ",
                 logging.CRITICAL: "fatal: "}


class PrintableMessages(logging.Filter):
    """Makes each record's message safe to write: the arguments merged in, control characters shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(record.getMessage())
        record.args = None
        record.level_prefix = _LEVEL_PREFIX.get(record.levelno, "")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (unix seconds), level, logger, msg; ASCII only."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=True)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger; aiosmtpd's own per-line chatter is kept at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PrintableMessages())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(name)s[%(process)d]: %(level_prefix)s%(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def setup_cli_logging() -> None:
    """For the commands other than ``run``: warnings and errors as ``gateway: warning: ...`` on standard error.

    Through the same :class:`PrintableMessages` filter: a queue command reads what
    the network wrote into the spool.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PrintableMessages())
    handler.setFormatter(logging.Formatter("gateway: %(level_prefix)s%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
