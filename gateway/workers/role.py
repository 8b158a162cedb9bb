"""What makes a gateway process a worker of a supervisor: its slot, its sockets, its share of the limits.

The supervisor passes these on the worker's command line (``gateway run --worker
SLOT/COUNT --supervisor PID --ready-fd FD --listen-fd NAME=FD ...``); the file
descriptors are inherited. The process-wide limits of the configuration are
the whole gateway's: each worker gets its share (:func:`worker_share`), so N
workers together hold what one process would; connection counts are shared
instead (:mod:`gateway.workers.anvil`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import signal
import socket
from dataclasses import dataclass, field

from gateway.config import Config
from gateway.errors import GatewayError

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(slots=True)
class WorkerRole:
    """One worker process of a supervised gateway.

    Attributes:
        slot: 0 .. count-1; names the worker's ``active.<slot>/`` spool directory.
        count: how many workers the supervisor runs.
        supervisor_pid: the parent; the worker dies with it.
        ready_fd: pipe to write one byte to once the worker serves (-1: none).
        sockets: listener name → the listening socket bound by the supervisor.
    """

    slot: int
    count: int
    supervisor_pid: int
    ready_fd: int = -1
    sockets: dict[str, socket.socket] = field(default_factory=dict)

    @classmethod
    def from_args(cls, worker: str, supervisor_pid: int, ready_fd: int, listen_fds: list[str]) -> WorkerRole:
        """Build from ``SLOT/COUNT`` and ``NAME=FD`` texts.

        Raises:
            GatewayError: a malformed argument or a file descriptor that is not a listening socket.
        """
        try:
            slot_text, count_text = worker.split("/")
            slot, count = int(slot_text), int(count_text)
            if not 0 <= slot < count:
                raise ValueError(worker)
            sockets = {}
            for item in listen_fds:
                name, fd_text = item.split("=")
                sockets[name] = socket.socket(fileno=int(fd_text))
        except (ValueError, OSError) as error:
            raise GatewayError(f"bad worker arguments ({error}): these are set by the supervisor") from None
        return cls(slot, count, supervisor_pid, ready_fd, sockets)

    def die_with_supervisor(self) -> None:
        """Have the kernel SIGKILL this process when the supervisor dies (Linux ``PR_SET_PDEATHSIG``).

        A SIGKILL, not a graceful stop: a new supervisor may start at once and recover the
        spool, and no worker of the old one may deliver after that. What this worker
        acknowledged is on disk; its claimed messages go back to the queue then.

        Raises:
            GatewayError: when the supervisor is already gone.
        """
        gone = GatewayError(f"supervisor {self.supervisor_pid} is gone")
        if os.getppid() != self.supervisor_pid:
            raise gone
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: nothing kills the worker with its supervisor
        if os.getppid() != self.supervisor_pid:  # it died between the check and the prctl
            raise gone

    def report_ready(self) -> None:
        """Tell the supervisor this worker serves (one byte on the ready pipe, then closed)."""
        if self.ready_fd >= 0:
            try:
                os.write(self.ready_fd, b"1")
            finally:
                os.close(self.ready_fd)
                self.ready_fd = -1


def worker_share(config: Config, count: int) -> Config:
    """``config`` with the gateway-wide limits divided among ``count`` workers (rounded up).

    Divided: ``default_destination_concurrency_limit``, ``delivery_concurrency_limit``
    and ``smtpd_data_memory_limit`` (bytes, rounded down). ``smtpd_connection_limit`` and
    ``smtpd_client_connection_count_limit`` stay whole: the workers count connections
    together (:mod:`gateway.workers.anvil`).
    """
    if count <= 1:
        return config
    return dataclasses.replace(
        config,
        default_destination_concurrency_limit=math.ceil(config.default_destination_concurrency_limit / count),
        delivery_concurrency_limit=math.ceil(config.delivery_concurrency_limit / count),
        smtpd_data_memory_limit=config.smtpd_data_memory_limit // count,
    )
