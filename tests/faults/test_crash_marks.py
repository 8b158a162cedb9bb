"""SIGKILL right after a next hop's 250: what it accepted is not delivered again (issue 17).

Two exact cases, where the statistics of ``test_crash.py`` cannot tell a gateway
that marks each 250 at once from one that records it a little later:

* the whole message: the relayhost kills the gateway from inside its own MAIL
  handler, when the gateway starts the next transaction on a connection that has
  just delivered messages. The relay worker marks a 250 before it does anything
  else with that connection, so every message delivered before that MAIL is
  marked, and with one delivery at a time none is in flight: after the restart
  every message must arrive exactly once;
* part of a message: one recipient is delivered, the other's next hop accepts the
  connection and never speaks (still in flight), and the gateway is killed then.
  After the restart only the other recipient may be delivered.
"""

from __future__ import annotations

import threading

from tests.faults.helpers import HungPeer, submit, wait_until
from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink

MESSAGES = 12
KILL_AT_MAIL_AFTER = 5  # messages delivered on one connection before the MAIL that kills


def test_a_sigkill_at_the_next_transaction_repeats_no_delivery(gateway_factory, sink: SmtpSink) -> None:
    # One delivery at a time over one connection (one worker process: with two, each would have its own
    # connection, and the other's could be waiting for a 250 at the kill).
    gateway: GatewayProcess = gateway_factory(
        relay_config(sink.port, "workers = 1\ndefault_destination_concurrency_limit = 1\n")
    )
    sink.stop()  # the relayhost is down while the messages are queued: they wait in deferred/
    gateway.start()
    for number in range(MESSAGES):
        submit(
            gateway.port,
            "a@example.com",
            [f"m{number}@elsewhere.org"],
            f"Subject: marks {number}\r\n\r\nbody {number}\r\n".encode(),
        )
    gateway.wait_for_log(r"deferred, 1 recipient\(s\) left", count=MESSAGES)

    killed = threading.Event()

    def kill_at_the_next_transaction(delivered_before: int) -> None:
        if delivered_before >= KILL_AT_MAIL_AFTER and not killed.is_set():
            killed.set()
            gateway.kill()

    sink.on_mail = kill_at_the_next_transaction
    sink.start()
    wait_until(killed.is_set, timeout=30, what=f"a MAIL after {KILL_AT_MAIL_AFTER} deliveries on one connection")
    sink.on_mail = None
    before_restart = dict(sink.delivered)
    assert len(before_restart) >= KILL_AT_MAIL_AFTER, before_restart
    gateway.start()
    wait_until(lambda: len(sink.delivered) == MESSAGES, timeout=30, what="every message at the relayhost")
    wait_until(
        lambda: "Mail queue is empty" in gateway.cli("queue", "list").stdout,
        timeout=30,
        interval=0.5,
        what="an empty queue",
    )
    assert sink.delivered == {f"m{number}@elsewhere.org": 1 for number in range(MESSAGES)}, (
        f"delivered before the kill: {sorted(before_restart)}"
    )


def test_a_sigkill_while_another_next_hop_hangs_keeps_the_delivered_recipient(gateway_factory, sink: SmtpSink) -> None:
    hung = HungPeer()  # b.test's next hop: accepts the connection, never sends its banner
    slow_port = hung.port
    try:
        gateway: GatewayProcess = gateway_factory(
            relay_config(sink.port, f'transport_maps = {{ "b.test" = "[127.0.0.1]:{slow_port}" }}\n')
        )
        gateway.start()
        queue_id = submit(
            gateway.port,
            "a@example.com",
            ["fast@elsewhere.org", "slow@b.test"],
            b"Subject: half delivered\r\n\r\nbody\r\n",
        )
        gateway.wait_for_log(rf"{queue_id}: to=<fast@elsewhere.org>, .*status=sent")
        assert hung.wait_for_connections(1, timeout=15), "the gateway never connected to b.test's next hop"
        gateway.kill()
    finally:
        hung.close()
    with SmtpSink(port=slow_port) as slow_sink:  # b.test answers after the restart
        gateway.start()
        slow_sink.wait_for_recipient("slow@b.test", timeout=30)
        wait_until(
            lambda: "Mail queue is empty" in gateway.cli("queue", "list").stdout,
            timeout=30,
            interval=0.5,
            what="an empty queue",
        )
        assert slow_sink.delivered == {"slow@b.test": 1}
    assert sink.delivered == {"fast@elsewhere.org": 1}, "the recipient delivered before the kill got it again"
