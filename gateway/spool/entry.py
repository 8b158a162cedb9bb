"""The spool record: envelope, per-recipient status, and the JSON it is stored as."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.envelope import ClientInfo
from gateway.reply import Reply

FORMAT_VERSION = 1


class QueueState(StrEnum):
    """Queue states, one directory each, as in Postfix (QSHAPE_README)."""

    INCOMING = "incoming"  # committed, not yet picked up by the relay worker
    ACTIVE = "active"  # being delivered; moved back to incoming at start
    DEFERRED = "deferred"  # some recipients failed temporarily; file mtime = next attempt
    HOLD = "hold"  # kept until an operator releases it; never retried automatically
    CORRUPT = "corrupt"  # unreadable record or message; kept for inspection


class RecipientState(StrEnum):
    """Where one recipient stands; DELIVERED and BOUNCED are final."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(slots=True)
class RecipientStatus:
    """One recipient's delivery state; a DELIVERED recipient is never tried again.

    last_attempt: unix seconds. relay: ``host[ip]:port`` that gave ``last_reply``.
    original: the RCPT address this recipient came from when an alias rewrote it (the ORCPT of its DSNs).
    notify: the RCPT's NOTIFY words (RFC 3461), None when not given; orcpt: its ORCPT, ``"type;address"``.
    """

    address: str
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0
    last_reply: Reply | None = None
    last_attempt: float | None = None
    relay: str | None = None
    original: str | None = None
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None

    @property
    def is_final(self) -> bool:
        """True when the recipient needs no more attempts."""
        return self.state in (RecipientState.DELIVERED, RecipientState.BOUNCED)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``original``, ``notify`` and ``orcpt`` only when there are some)."""
        data: dict[str, Any] = {
            "address": self.address,
            "state": self.state.value,
            "attempts": self.attempts,
            "last_reply": self.last_reply.to_dict() if self.last_reply else None,
            "last_attempt": self.last_attempt,
            "relay": self.relay,
        }
        if self.original is not None:
            data["original"] = self.original
        if self.notify is not None:
            data["notify"] = list(self.notify)
        if self.orcpt is not None:
            data["orcpt"] = self.orcpt
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipientStatus:
        """Inverse of :meth:`to_dict`."""
        reply = data.get("last_reply")
        return cls(
            address=str(data["address"]),
            state=RecipientState(data["state"]),
            attempts=int(data.get("attempts", 0)),
            last_reply=Reply.from_dict(reply) if reply else None,
            last_attempt=data.get("last_attempt"),
            relay=data.get("relay"),
            original=data.get("original"),
            notify=tuple(str(word) for word in data["notify"]) if data.get("notify") is not None else None,
            orcpt=data.get("orcpt"),
        )


@dataclass(slots=True)
class SpoolEntry:
    """One queued message's envelope record (the file ``<state>/<queue_id>.json``).

    arrival / next_attempt: unix seconds. last_delay: seconds of the last backoff.
    message_size: bytes of the message file; message_sha256: its lowercase hex
    digest, which detects a torn or damaged message file (Postfix's END record role);
    both are set by :meth:`Spool.commit` / :meth:`Spool.commit_many` (0 and "" before).
    is_bounce: our own DSN: bounce_queue_lifetime applies and it is never bounced.
    client: who sent it, or None for mail generated here (our DSNs).
    """

    queue_id: str
    arrival: float
    sender: str
    recipients: list[RecipientStatus]
    client: ClientInfo | None
    message_size: int = 0
    message_sha256: str = ""
    next_attempt: float = 0.0
    last_delay: float | None = None
    is_bounce: bool = False
    smtputf8: bool = False
    body_8bitmime: bool = False
    hold_reason: str | None = None
    dsn_ret: str | None = None  # RFC 3461 RET of MAIL: FULL or HDRS
    dsn_envid: str | None = None  # RFC 3461 ENVID of MAIL, decoded
    delay_warned: bool = False  # the delay_warning_time DSN has been sent
    format_version: int = FORMAT_VERSION
    state: QueueState = field(default=QueueState.INCOMING, compare=False)

    def pending(self) -> list[RecipientStatus]:
        """Recipients still to deliver (PENDING or DEFERRED)."""
        return [r for r in self.recipients if not r.is_final]

    def to_json(self) -> bytes:
        """Serialise as UTF-8 JSON (the state is the directory, not a field)."""
        data = {
            "format_version": self.format_version,
            "queue_id": self.queue_id,
            "arrival": self.arrival,
            "next_attempt": self.next_attempt,
            "last_delay": self.last_delay,
            "sender": self.sender,
            "recipients": [r.to_dict() for r in self.recipients],
            "client": self.client.to_dict() if self.client is not None else None,
            "message_size": self.message_size,
            "message_sha256": self.message_sha256,
            "is_bounce": self.is_bounce,
            "smtputf8": self.smtputf8,
            "body_8bitmime": self.body_8bitmime,
            "hold_reason": self.hold_reason,
        }
        if self.dsn_ret is not None:
            data["dsn_ret"] = self.dsn_ret
        if self.dsn_envid is not None:
            data["dsn_envid"] = self.dsn_envid
        if self.delay_warned:
            data["delay_warned"] = True
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogateescape")

    @classmethod
    def from_json(cls, raw: bytes, state: QueueState) -> SpoolEntry:
        """Parse a record.

        Raises:
            ValueError: on bad JSON, a missing field or a newer format_version.
        """
        try:
            data = json.loads(raw.decode("utf-8", "surrogateescape"))
            version = int(data["format_version"])
            if version > FORMAT_VERSION:
                raise ValueError(f"record format {version} is newer than this gateway ({FORMAT_VERSION})")
            return cls(
                queue_id=str(data["queue_id"]),
                arrival=float(data["arrival"]),
                sender=str(data["sender"]),
                recipients=[RecipientStatus.from_dict(r) for r in data["recipients"]],
                client=ClientInfo.from_dict(data["client"]) if data["client"] is not None else None,
                message_size=int(data["message_size"]),
                message_sha256=str(data["message_sha256"]),
                next_attempt=float(data.get("next_attempt", 0.0)),
                last_delay=data.get("last_delay"),
                is_bounce=bool(data.get("is_bounce", False)),
                smtputf8=bool(data.get("smtputf8", False)),
                body_8bitmime=bool(data.get("body_8bitmime", False)),
                hold_reason=data.get("hold_reason"),
                dsn_ret=data.get("dsn_ret"),
                dsn_envid=data.get("dsn_envid"),
                delay_warned=bool(data.get("delay_warned", False)),
                format_version=version,
                state=state,
            )
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError, RecursionError) as error:
            # RecursionError: JSON nested thousands deep; ValueError: bad JSON, numbers, addresses.
            raise ValueError(f"malformed spool record: {type(error).__name__}: {str(error)[:200]}") from None
