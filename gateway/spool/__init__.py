"""The durable on-disk mail queue (see :mod:`gateway.spool.store` for the commit protocol)."""

from gateway.spool.entry import QueueState, RecipientState, RecipientStatus, SpoolEntry
from gateway.spool.queue_id import new_queue_id
from gateway.spool.store import Spool
from gateway.spool.threads import run_io

__all__ = ["QueueState", "RecipientState", "RecipientStatus", "SpoolEntry", "Spool", "new_queue_id", "run_io"]
