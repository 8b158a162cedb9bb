"""gateway.workers: a worker's share of the limits, its arguments, the supervisor's sockets, exit texts."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from gateway.config import build
from gateway.errors import ConfigError, GatewayError
from gateway.values import ListenerConfig
from gateway.workers.role import WorkerRole, worker_share
from gateway.workers.sockets import bind_listener
from gateway.workers.supervisor import describe_exit


def test_workers_key_takes_auto_or_a_positive_number() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert build({}).workers == cpus  # the default is "auto": one worker per CPU
    assert build({"workers": 3}).workers == 3
    assert build({"workers": "auto"}).workers == cpus
    assert build({"workers": 1}).workers == 1
    with pytest.raises(ConfigError, match="workers"):
        build({"workers": 0})
    with pytest.raises(ConfigError, match="workers"):
        build({"workers": "many"})


def test_each_worker_gets_its_share_of_the_gateway_wide_limits() -> None:
    config = build(
        {
            "smtpd_connection_limit": 501,
            "smtpd_data_memory_limit": "128M",
            "delivery_concurrency_limit": 100,
            "default_destination_concurrency_limit": 20,
            "smtpd_client_connection_count_limit": 50,
        }
    )
    share = worker_share(config, 2)
    assert share.smtpd_connection_limit == 501  # counted together (gateway.workers.anvil)
    assert share.smtpd_data_memory_limit == 64 * 1024 * 1024
    assert share.delivery_concurrency_limit == 50
    assert share.default_destination_concurrency_limit == 10
    assert share.smtpd_client_connection_count_limit == 50
    assert worker_share(config, 1) is config


def test_worker_arguments_are_parsed_and_bad_ones_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        role = WorkerRole.from_args("1/2", 4242, -1, [f"smtp={sock.fileno()}"])
        assert (role.slot, role.count, role.supervisor_pid) == (1, 2, 4242)
        assert role.sockets["smtp"].getsockname() == sock.getsockname()
        role.sockets["smtp"].detach()  # the same descriptor: closed once, by the with block
    for worker, fds in [("2/2", []), ("x", []), ("0/2", ["smtp"])]:
        with pytest.raises(GatewayError, match="bad worker arguments"):
            WorkerRole.from_args(worker, 4242, -1, fds)


def test_a_dead_supervisor_is_noticed_at_once() -> None:
    with pytest.raises(GatewayError, match="supervisor 1 is gone"):
        WorkerRole(0, 2, supervisor_pid=1).die_with_supervisor()  # our parent is not PID 1


def test_bind_listener_gives_every_worker_a_socket_on_one_port() -> None:
    sockets = bind_listener(ListenerConfig(name="smtp", host="127.0.0.1", port=0, tls="none"), 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(sockets) == 3 and len(ports) == 1
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=5):
            pass  # accepted into one of the backlogs
    finally:
        for sock in sockets:
            sock.close()


def test_describe_exit() -> None:
    assert describe_exit(0) == "status 0"
    assert describe_exit(3) == "status 3"
    assert describe_exit(-signal.SIGKILL) == "signal 9 (SIGKILL)"
