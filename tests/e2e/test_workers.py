"""``workers = 2``: a supervisor and two worker processes on one spool (real processes, sockets, signals).

Each test reads the worker PIDs from the supervisor's process tree and tells the
workers apart in the log by the PID every line carries (``gateway.smtpd[PID]``).
Connections are spread by the kernel (SO_REUSEPORT hashes the client's port), so
30 sessions all landing on one worker has a chance of 2**-29.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil

from tests.faults.helpers import submit
from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import http_get, relay_config
from tests.harness.smtp_sink import SmtpSink

WORKERS = "workers = 2\n"
ACCEPTED_RE = re.compile(r"gateway\.smtpd\[(\d+)\]: [0-9A-F]{19}: client=")
SENT_RE = re.compile(r"gateway\.relay\[(\d+)\]: [0-9A-F]{19}: to=<[^>]+>, .*status=sent")


def worker_pids(gateway: GatewayProcess) -> set[int]:
    """The PIDs of the supervisor's worker processes now."""
    assert gateway.process is not None
    return {child.pid for child in psutil.Process(gateway.process.pid).children()}


def pids_matching(gateway: GatewayProcess, regex: re.Pattern[str]) -> list[int]:
    return [int(match[1]) for line in gateway.log_text.splitlines() if (match := regex.search(line))]


def metric(page: str, name: str, labels: str = "") -> float:
    """The sum of every sample of ``name`` whose label text contains ``labels``."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(value) for label_text, value in pattern.findall(page) if labels in label_text)


def message(number: int) -> bytes:
    return f"Subject: worker test {number}\r\nMessage-ID: <w{number}@workers.test>\r\n\r\nbody {number}\r\n".encode()


def test_two_workers_both_accept_and_deliver_and_metrics_count_each_message_once(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port) + WORKERS) as gateway:
        workers = worker_pids(gateway)
        assert len(workers) == 2 and gateway.process.pid not in workers
        for number in range(30):
            submit(gateway.port, "a@example.com", [f"r{number}@elsewhere.org"], message(number))
        sink.wait_for_messages(30, timeout=30)
        gateway.wait_for_log(r"[0-9A-F]{19}: removed", count=30)
        assert set(pids_matching(gateway, ACCEPTED_RE)) == workers  # both accepted sessions ...
        assert set(pids_matching(gateway, SENT_RE)) == workers  # ... and both delivered
        assert sink.delivered == {f"r{number}@elsewhere.org": 1 for number in range(30)}
        status, page = http_get(gateway.metrics_url + "/metrics")  # served by the supervisor
        assert status == 200
        assert metric(page, "gateway_messages_received_total", 'result="incoming"') == 30
        assert metric(page, "gateway_recipients_total", 'status="delivered"') == 30
        assert metric(page, "gateway_smtp_connections_total") == 30
        assert metric(page, "gateway_queue_messages") == 0
        assert http_get(gateway.metrics_url + "/healthz")[0] == 200


def test_sigkill_of_a_worker_under_load_loses_nothing_and_the_supervisor_restarts_it(gateway_factory, sink):
    acknowledged: list[int] = []
    failed: list[int] = []
    with gateway_factory(relay_config(sink.port) + WORKERS) as gateway:
        workers = worker_pids(gateway)
        victim = min(workers)

        def send() -> None:
            for number in range(80):
                try:
                    submit(gateway.port, "a@example.com", [f"r{number}@elsewhere.org"], message(number))
                    acknowledged.append(number)
                except (OSError, smtplib.SMTPException, AssertionError):
                    failed.append(number)  # a session of the killed worker: never acknowledged

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        sender.join(120)
        assert not sender.is_alive()
        gateway.wait_for_log(rf"worker \d \(pid {victim}\) exited with signal 9 \(SIGKILL\)")
        restarted = gateway.wait_for_log(r"worker \d restarted \(pid \d+\)")[-1]
        new_pid = int(re.search(r"restarted \(pid (\d+)\)", restarted)[1])  # type: ignore[index]
        assert worker_pids(gateway) == (workers - {victim}) | {new_pid}
        assert len(acknowledged) >= 60, (len(acknowledged), failed)
        sink.wait_for_messages(len(set(acknowledged)), timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(sink.messages_for(f"r{n}@elsewhere.org") for n in acknowledged):
            time.sleep(0.1)
        lost = [n for n in acknowledged if not sink.messages_for(f"r{n}@elsewhere.org")]
        assert not lost, f"acknowledged but never delivered: {lost}"
        gateway.wait_for_log(rf"gateway\[{new_pid}\]: worker \d: \d+ messages requeued from ")


def test_supervisor_killed_takes_its_workers_and_a_restart_delivers_everything(gateway_factory):
    sink = SmtpSink()  # bound, not started: the relayhost is down, so the mail stays queued
    gateway = gateway_factory(relay_config(sink.port) + WORKERS)
    try:
        gateway.start()
        workers = [psutil.Process(pid) for pid in worker_pids(gateway)]
        for number in range(12):
            submit(gateway.port, "a@example.com", [f"r{number}@elsewhere.org"], message(number))
        gateway.kill()  # SIGKILL of the supervisor ...
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "workers outlived their supervisor"  # ... takes the workers (PR_SET_PDEATHSIG)
        listed = gateway.cli("queue", "list").stdout
        assert len(re.findall(r"^\s+r\d+@elsewhere\.org$", listed, re.M)) == 12, listed  # active ones too
        sink.start()
        gateway.start()
        sink.wait_for_messages(12, timeout=30)
        assert sink.delivered == {f"r{number}@elsewhere.org": 1 for number in range(12)}
    finally:
        gateway.stop()
        sink.stop()


def test_sighup_reloads_every_worker(gateway_factory, sink):
    with SmtpSink() as second_sink:
        gateway = gateway_factory(relay_config(sink.port) + WORKERS)
        with gateway:
            workers = worker_pids(gateway)
            gateway.config_path.write_text(
                gateway.config_path.read_text().replace(f"[127.0.0.1]:{sink.port}", f"[127.0.0.1]:{second_sink.port}")
            )
            gateway.process.send_signal(signal.SIGHUP)
            reloaded = gateway.wait_for_log(r"gateway\[\d+\]: reload done", count=2)
            assert {int(re.search(r"gateway\[(\d+)\]", line)[1]) for line in reloaded} == workers  # type: ignore[index]
            offset = len(pids_matching(gateway, SENT_RE))
            for number in range(30):
                submit(gateway.port, "a@example.com", [f"r{number}@elsewhere.org"], message(number))
            second_sink.wait_for_messages(30, timeout=30)
            gateway.wait_for_log(r"[0-9A-F]{19}: removed", count=30)
            assert sink.messages == []  # the old relayhost: no worker kept it
            assert set(pids_matching(gateway, SENT_RE)[offset:]) == workers


def test_sigterm_drains_every_worker_and_exits_0(gateway_factory, sink):
    gateway = gateway_factory(relay_config(sink.port) + WORKERS)
    gateway.start()
    workers = [psutil.Process(pid) for pid in worker_pids(gateway)]
    idle = []
    for _ in range(8):  # idle sessions, spread over both workers
        client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=15)
        client.ehlo("idle.test")
        idle.append(client)
    busy = smtplib.SMTP("127.0.0.1", gateway.port, timeout=15)
    busy.ehlo("busy.test")
    assert busy.mail("a@example.com")[0] == 250
    assert busy.rcpt("open@elsewhere.org")[0] == 250
    gateway.process.send_signal(signal.SIGTERM)
    for client in idle:
        assert client.getreply()[0] == 421  # 421 4.3.2 at once, from whichever worker held it
        client.close()
    assert busy.data(message(1))[0] == 250  # the open transaction is finished and acknowledged
    busy.close()
    assert gateway.process.wait(60) == 0
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive
    stopped = [line for line in gateway.log_text.splitlines() if line.endswith("gateway stopped")]
    assert len(stopped) == 3, stopped  # two workers and the supervisor
    assert sink.messages_for("open@elsewhere.org") or "open@elsewhere.org" in gateway.cli("queue", "list").stdout


def test_connection_limits_count_the_sessions_of_both_workers(gateway_factory, sink):
    config = relay_config(sink.port, "smtpd_client_connection_count_limit = 4\n") + WORKERS
    with gateway_factory(config) as gateway:
        held = []
        try:
            for _ in range(4):  # spread over both workers by the kernel
                client = smtplib.SMTP("127.0.0.1", gateway.port, source_address=("127.0.0.3", 0), timeout=10)
                held.append(client)
            holders = set(
                pids_matching(gateway, re.compile(r"gateway\.smtpd\[(\d+)\]: connect from unknown\[127\.0\.0\.3\]"))
            )
            for _ in range(6):  # the fifth and later: refused whichever worker they reach
                with socket.create_connection(
                    ("127.0.0.1", gateway.port), source_address=("127.0.0.3", 0), timeout=10
                ) as extra:
                    assert extra.recv(200).startswith(b"421 4.7.0 ")
            refused_by = set(pids_matching(gateway, re.compile(r"gateway\.smtpd\[(\d+)\]: .*connection limit reached")))
            with smtplib.SMTP("127.0.0.1", gateway.port, source_address=("127.0.0.4", 0), timeout=10) as other:
                assert other.noop()[0] == 250  # another client is served
        finally:
            for client in held:
                client.close()
        assert holders | refused_by <= worker_pids(gateway)
        assert len(holders | refused_by) == 2  # both workers took part (10 connections: 2**-9 otherwise)
        time.sleep(0.5)  # the closes reach the workers
        with smtplib.SMTP("127.0.0.1", gateway.port, source_address=("127.0.0.3", 0), timeout=10) as again:
            assert again.noop()[0] == 250  # the slots came free


def test_a_config_its_prepare_step_refuses_stops_the_supervisor_with_status_2(gateway_factory, sink):
    gateway = gateway_factory(
        relay_config(sink.port) + WORKERS + 'smtpd_tls_cert_file = "/nonexistent/server.crt"\n'
        'smtpd_tls_key_file = "/nonexistent/server.key"\n'
    )
    done = subprocess.run(gateway.command("run"), capture_output=True, text=True, env=gateway.env, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "configuration error" in done.stderr and "smtpd_tls_cert_file" in done.stderr
    assert done.stderr.count("gateway: configuration error:") == 1  # said once, by the prepare step
    assert "worker 0" not in done.stdout + done.stderr  # no worker was started


def test_a_refused_reload_keeps_every_worker_on_the_running_config(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port) + WORKERS) as gateway:
        workers = worker_pids(gateway)
        good = gateway.config_path.read_text()
        gateway.config_path.write_text(good + 'maximal_queue_lifetime = "forever"\n')
        gateway.process.send_signal(signal.SIGHUP)
        gateway.wait_for_log(r"reload refused, keeping the running configuration: .*maximal_queue_lifetime")
        for number in range(10):
            submit(gateway.port, "a@example.com", [f"r{number}@elsewhere.org"], message(number))
        sink.wait_for_messages(10, timeout=30)
        assert worker_pids(gateway) == workers
        assert "reload done" not in gateway.log_text  # no worker was told to reload
        assert gateway.log_text.count("reload refused") == 1


def test_the_supervisor_maps_neither_cryptography_nor_the_smtp_stack(gateway_factory, sink):
    # the default STARTTLS listener on a local CA: the prepare step writes the CA, the workers load it
    with gateway_factory(relay_config(sink.port) + WORKERS) as gateway:
        supervisor = psutil.Process(gateway.process.pid)
        mapped = {Path(region.path).name for region in supervisor.memory_maps()}
        assert not {name for name in mapped if name.startswith("_rust.abi3")}, mapped  # cryptography's
        worker_maps = {
            Path(region.path).name for pid in worker_pids(gateway) for region in psutil.Process(pid).memory_maps()
        }
        assert any(name.startswith("_rust.abi3") for name in worker_maps)  # the workers do read the certificate
        assert gateway.ca_file.exists()
