"""Scale-down: ``gateway drain`` empties a replica into a peer, and ``/readyz`` means something.

Real parts: replica A (a gateway relaying to a relayhost that tempfails most
recipients, so its queue fills with deferred mail), peer B (a second gateway,
its own spool) relaying to the final SMTP sink S, which offers DSN and records
every parameter it gets. A drains into B: every message A acknowledged reaches
S exactly once, the recipients A had already delivered are not sent again, held
mail goes too, the RFC 3461 parameters arrive intact, and A's spool ends empty.
While A drains, ``/readyz`` says so, new connections are refused, and a
transaction already open finishes and is handed on as well.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import time

import pytest

from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import http_get, relay_config
from tests.harness.smtp_sink import SmtpSink

LATER = "451 4.2.0 Mailbox busy, try later"
DEFERRED = [f"d{n}@elsewhere.org" for n in range(1, 6)]  # the relayhost keeps tempfailing these


@pytest.fixture
def relayhost():
    """A's relayhost: accepts ``early@elsewhere.org``, tempfails the DEFERRED recipients many times."""
    with SmtpSink() as server:
        server.rcpt_replies = {address: [LATER] * 50 for address in DEFERRED}
        yield server


@pytest.fixture
def final():
    """Where B delivers: offers DSN and records the parameters."""
    with SmtpSink(dsn=True) as server:
        yield server


def replica_and_peer(gateway_factory, relayhost, final, extra: str = "") -> tuple[GatewayProcess, GatewayProcess]:
    peer = gateway_factory(relay_config(final.port), name="peer")
    replica = gateway_factory(relay_config(relayhost.port, 'drain_timeout = "3s"\n' + extra), name="replica")
    return replica, peer


def send(port: int, recipients: list[str], subject: str, **options) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
        client.sendmail(
            "sender@example.com", recipients, f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode(), **options
        )


def queue_ids(gateway: GatewayProcess) -> dict[str, str]:
    """Queue ID -> state of every message in the gateway's spool (``gateway queue list --json``)."""
    rows = [json.loads(line) for line in gateway.cli("queue", "list", "--json").stdout.splitlines() if line]
    return {row["queue_id"]: row["state"] for row in rows}


def fill_queue(replica: GatewayProcess, relayhost: SmtpSink) -> None:
    """Four deferred messages (one with DSN parameters, one partly delivered, one held)."""
    send(replica.port, [DEFERRED[0]], "plain")
    send(
        replica.port,
        [DEFERRED[1]],
        "with-dsn",
        mail_options=["RET=HDRS", "ENVID=env-42"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;list@example.org"],
    )
    send(replica.port, ["early@elsewhere.org", DEFERRED[2]], "partly")
    send(replica.port, [DEFERRED[3]], "held")
    replica.wait_for_log(r"status=deferred", count=4)
    relayhost.wait_for_recipient("early@elsewhere.org")
    held = [
        queue_id for queue_id in queue_ids(replica) if "Subject: held" in replica.cli("queue", "show", queue_id).stdout
    ]
    assert len(held) == 1
    replica.cli("queue", "hold", held[0])
    assert sorted(queue_ids(replica).values()) == ["deferred", "deferred", "deferred", "hold"]


def assert_every_message_once_at_final(final: SmtpSink, relayhost: SmtpSink, recipients: list[str]) -> None:
    final.wait_for_messages(len(recipients), timeout=20)
    time.sleep(0.5)  # nothing more may come
    assert final.delivered == {address: 1 for address in recipients}
    assert relayhost.delivered == {"early@elsewhere.org": 1}  # delivered before the drain, not sent again
    assert "early@elsewhere.org" not in final.delivered
    with_dsn = final.messages_for(DEFERRED[1])[0]
    assert "RET=HDRS" in with_dsn.mail_options and "ENVID=env-42" in with_dsn.mail_options, with_dsn.mail_options
    assert with_dsn.rcpt_params is not None
    params = with_dsn.rcpt_params[DEFERRED[1]]
    assert "NOTIFY=SUCCESS,FAILURE" in params and "ORCPT=rfc822;list@example.org" in params, params
    held = final.messages_for(DEFERRED[3])[0]
    assert b"Subject: held" in held.data


def spool_records(gateway: GatewayProcess) -> list[str]:
    return sorted(str(path.relative_to(gateway.state_dir)) for path in (gateway.state_dir / "spool").rglob("*.json"))


@pytest.mark.parametrize("workers", [1, 2])
def test_drain_hands_a_running_replicas_queue_to_its_peer(gateway_factory, relayhost, final, workers):
    replica, peer = replica_and_peer(gateway_factory, relayhost, final, f"workers = {workers}\n")
    with peer:
        replica.start()
        fill_queue(replica, relayhost)
        status, text = http_get(replica.metrics_url + "/readyz")
        assert status == 200 and "ok   draining: taking mail" in text, text
        # A transaction open when the drain starts: it may finish, and its message goes on too.
        open_session = smtplib.SMTP("127.0.0.1", replica.port, timeout=30)
        open_session.ehlo("client.test")
        open_session.mail("sender@example.com")
        open_session.rcpt(DEFERRED[4])
        drain = subprocess.Popen(
            replica.command("drain", "--to", f"[127.0.0.1]:{peer.port}"),
            env=replica.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            replica.wait_for_log(r"drain requested: hand-off to \[127\.0\.0\.1\]:\d+")
            status, text = http_get(replica.metrics_url + "/readyz")
            assert status == 503 and "FAIL draining: draining" in text, text
            time.sleep(0.3)  # the listener closes right after the request
            with pytest.raises(OSError):
                smtplib.SMTP("127.0.0.1", replica.port, timeout=5)
            code, _ = open_session.data(b"Subject: open\r\n\r\nthe open transaction\r\n")
            assert code == 250
            output, _ = drain.communicate(timeout=60)
        finally:
            if drain.poll() is None:
                drain.kill()
            open_session.close()
        assert drain.returncode == 0, output
        assert f"handed off: 5 messages to [127.0.0.1]:{peer.port}; left: 0" in output, output
        assert replica.process is not None and replica.process.wait(30) == 0
        assert_every_message_once_at_final(final, relayhost, DEFERRED)
    assert spool_records(replica) == []
    assert "status=handed-off (held)" in replica.log_text


def test_sigterm_with_drain_to_drains_into_the_peer(gateway_factory, relayhost, final):
    replica, peer = replica_and_peer(gateway_factory, relayhost, final)
    with peer:
        replica.config_path.write_text(
            replica.config_path.read_text().replace(
                'drain_timeout = "3s"\n', f'drain_timeout = "3s"\ndrain_to = "[127.0.0.1]:{peer.port}"\n'
            )
        )
        replica.start()
        fill_queue(replica, relayhost)
        assert replica.stop(timeout=60) == 0  # SIGTERM
        assert_every_message_once_at_final(final, relayhost, DEFERRED[:4])
    assert spool_records(replica) == []
    replica.wait_for_log(r"drain done: 4 messages handed to \[127\.0\.0\.1\]:\d+, 0 left")


def test_drain_of_a_stopped_replicas_spool(gateway_factory, relayhost, final):
    replica, peer = replica_and_peer(gateway_factory, relayhost, final)
    replica.start()
    fill_queue(replica, relayhost)
    assert replica.stop() == 0  # SIGTERM without drain_to: the queue stays in the volume
    before = spool_records(replica)
    assert len(before) == 4
    nobody = replica.cli("drain", check=False)
    assert nobody.returncode == 2 and "give --to HOST:PORT or set drain_to" in nobody.stdout
    # The peer is not running yet: nothing is handed, nothing is lost.
    down = replica.cli("drain", "--to", f"[127.0.0.1]:{peer.port}", check=False)
    assert down.returncode == 1 and "handed off: 0 messages" in down.stdout and "left: 4" in down.stdout, down.stdout
    assert spool_records(replica) == before
    with peer:
        done = replica.cli("drain", "--to", f"[127.0.0.1]:{peer.port}", check=False)
        assert done.returncode == 0 and "handed off: 4 messages" in done.stdout, done.stdout + done.stderr
        assert_every_message_once_at_final(final, relayhost, DEFERRED[:4])
    assert spool_records(replica) == []
