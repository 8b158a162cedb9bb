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

_LEVEL_PREFIX = {
    logging.DEBUG: "debug: ",
    logging.WARNING: "warning: ",
    logging.ERROR: "error: ",
    logging.CRITICAL: "fatal: ",
}


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
        data = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """``TIME NAME[PID]: PREFIX MESSAGE`` in UTC; the time text is made once per second, not per line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s[%(process)d]: %(level_prefix)s%(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)))
        return f"{cached[1]},{int(record.msecs):03d}"


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger; aiosmtpd's own per-line chatter is kept at WARNING.

    A gateway logs several lines per message, so the record attributes no line
    shows are not collected (the logging HOWTO's "Optimization": caller's file and
    line, thread and process names) and the time text is made once per second: 14 -> 7 µs a line.
    """
    logging._srcfile = None  # documented switch: no sys._getframe per record
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PrintableMessages())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
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
