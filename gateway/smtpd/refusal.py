"""One place where a refused SMTP stage becomes the reply we send: counted, logged, returned.

Every refusal of the SMTP edge (a policy's verdict, a limit, a syntax error the
gateway detects, a spool error) goes through :func:`refuse` (maddy's
``wrapErr`` is the model): ``gateway_messages_rejected_total{stage, reason,
class}`` counts it and one Postfix-style line logs it, ``NOQUEUE: reject: RCPT
from unknown[192.0.2.1]:40000: 554 5.7.1 <x@y>: Relay access denied;
from=<a@b> to=<x@y> helo=<h>``, or, at DATA once a queue ID is known, the
transaction's own summary line with ``result=reject``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway import metrics
from gateway.reply import Reply

log = logging.getLogger("gateway.smtpd")

STAGES = ("connect", "helo", "ehlo", "mail", "rcpt", "data", "session")


def refuse(
    stage: str,
    reply: Reply,
    *,
    reason: str,
    client: str,
    sender: str | None = None,
    recipients: Sequence[str] = (),
    helo: str | None = None,
    summary: str | None = None,
    detail: str | None = None,
    rule: str | None = None,
) -> str:
    """Count and log a refused ``stage``; return the reply line to send.

    Args:
        stage: one of :data:`STAGES` (the metric's ``stage`` label).
        reply: what the client is told (4xx or 5xx).
        reason: a short, bounded label (``relay_denied``, ``hopcount`` ...; the metric's ``reason``).
        client: the client as logged (:meth:`gateway.envelope.ClientInfo.describe`).
        sender, recipients, helo: the ``from=<>``, ``to=<>`` and ``helo=<>`` fields, when known.
        summary: at DATA, the transaction's summary line; it is logged with the
            result instead of the ``NOQUEUE`` form.
        detail: more for the log line (a scanner's finding, an error).
        rule: the config key that refused it (``rule=relay_recipient_maps``), when it is not ``reason`` itself.

    Returns:
        ``str(reply)``.
    """
    metrics.MESSAGES_REJECTED.labels(stage, reason, metrics.reply_class(reply.code)).inc()
    more = (f" rule={rule}" if rule else "") + (f" detail={detail}" if detail else "")
    if summary is not None:
        result = "tempfail" if reply.is_transient else "reject"
        log.info("%s, result=%s (%s) reason=%s%s", summary, result, reply, reason, more)
        return str(reply)
    fields = []
    if sender is not None:
        fields.append(f"from=<{sender}>")
    if recipients:
        fields.append("to=" + ",".join(f"<{address}>" for address in recipients))
    if helo is not None:
        fields.append(f"helo=<{helo}>")
    log.info(
        "NOQUEUE: reject: %s from %s: %s%s%s",
        stage.upper(),
        client,
        reply,
        "; " + " ".join(fields) if fields else "",
        more,
    )
    return str(reply)
