"""The gateway's exception tree.

::

    GatewayError
    ├── ConfigError          a configuration key has a bad value (names key, value, what is allowed)
    ├── SpoolError           the spool cannot be read or written
    │   ├── SpoolFullError   no space left (ENOSPC/EDQUOT): new mail gets 452 4.3.1
    │   └── NotInQueue       no such queue ID in the states asked for
    ├── DeliveryError        a delivery attempt failed before any per-recipient reply
    └── ScannerError         a content scanner is down, too slow, or answered garbage

Only ``gateway.cli`` turns these into exit codes; the SMTP layer turns them into
replies (unknown errors become ``451 4.3.0``).
"""

from __future__ import annotations

from gateway.reply import Reply


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration value is invalid.

    Attributes:
        key: dotted config key, e.g. ``"relayhost"`` or ``"listener[0].tls"``.
        value: the offending value as given.
        allowed: what would have been accepted.
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"config key {key!r}: invalid value {value!r}: {allowed}")

    @classmethod
    def unbindable(cls, key: str, address: str, error: OSError) -> ConfigError:
        """The error for a listening address (``key``, ``"host:port"``) that cannot be bound."""
        return cls(key, address, f"an address this host can listen on ({error.strerror})")


class SpoolError(GatewayError):
    """The spool could not be read or written."""


class SpoolFullError(SpoolError):
    """The spool's file system has no space left (ENOSPC or EDQUOT)."""


class NotInQueue(SpoolError):
    """No message with that queue ID is in the requested queue states."""


class DeliveryError(GatewayError):
    """A delivery attempt failed as a whole (connection, TLS, greeting, MAIL FROM or DATA).

    Attributes:
        reply: the Reply recorded for every recipient of the attempt.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(str(reply))


class ScannerError(GatewayError):
    """A content scanner (clamd, spamd, rspamd) failed: unreachable, timed out, or answered garbage.

    The pipeline applies the policy's ``on_error`` setting: tempfail (``451 4.7.1``,
    the default) or pass the message unscanned with a header saying so.
    """


class ChildFailed(GatewayError):
    """A helper process failed and has already said why on stderr; exit with its ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
