"""The relay client towards the next hop: TLS security levels, SMTP AUTH, connection reuse."""

from __future__ import annotations

import smtplib
import ssl

import pytest
import trustme

from tests.harness.helpers import relay_config
from tests.harness.smtp_sink import SmtpSink


@pytest.fixture(scope="module")
def sink_ca(tmp_path_factory):
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("sink-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


@pytest.fixture
def tls_sink(sink_ca):
    ca, _ = sink_ca
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sink.test", "127.0.0.1").configure_cert(server_context)
    with SmtpSink(tls_context=server_context, auth={"relayuser": "s3cret"}) as sink:
        yield sink


def send(port: int, recipients: list[str], count: int = 1) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for index in range(count):
            assert client.sendmail("a@example.com", recipients, f"Subject: {index}\r\n\r\nx\r\n".encode()) == {}


def test_verify_level_with_auth_delivers_over_verified_tls(gateway_factory, tls_sink, sink_ca):
    _, ca_path = sink_ca
    config = relay_config(
        tls_sink.port,
        f'smtp_tls_security_level = "verify"\nsmtp_tls_CAfile = "{ca_path}"\n'
        f'smtp_sasl_password_maps = {{ "[127.0.0.1]:{tls_sink.port}" = "relayuser:s3cret" }}\n',
    )
    with gateway_factory(config) as gateway:
        send(gateway.port, ["b@elsewhere.org"])
        (message,) = tls_sink.wait_for_messages(1)
    assert message.tls and message.auth_user == "relayuser"


def test_verify_level_refuses_an_unverifiable_certificate(gateway_factory, tls_sink):
    config = relay_config(tls_sink.port, 'smtp_tls_security_level = "verify"\n')  # system CAs: sink not trusted
    with gateway_factory(config) as gateway:
        send(gateway.port, ["b@elsewhere.org"])
        gateway.wait_for_log(r"to=<b@elsewhere\.org>.*status=deferred \(451 4\.4\.2 .*(CERTIFICATE_VERIFY|certificate)")
    assert tls_sink.messages == []


def test_encrypt_level_defers_when_starttls_is_not_offered(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port, 'smtp_tls_security_level = "encrypt"\n')) as gateway:
        send(gateway.port, ["b@elsewhere.org"])
        gateway.wait_for_log(r"status=deferred \(451 4\.7\.4 TLS is required")
    assert sink.messages == []


def test_may_level_uses_tls_when_offered_and_none_never(gateway_factory, tls_sink):
    with gateway_factory(relay_config(tls_sink.port, 'smtp_tls_security_level = "may"\n'), name="may") as gw:
        send(gw.port, ["b@elsewhere.org"])
        assert tls_sink.wait_for_messages(1)[0].tls
    tls_sink.reset()
    with gateway_factory(relay_config(tls_sink.port, 'smtp_tls_security_level = "none"\n'), name="none") as gw:
        send(gw.port, ["c@elsewhere.org"])
        assert not tls_sink.wait_for_messages(1)[0].tls


def test_wrong_auth_credentials_defer(gateway_factory, tls_sink):
    config = relay_config(
        tls_sink.port, f'smtp_sasl_password_maps = {{ "[127.0.0.1]:{tls_sink.port}" = "relayuser:wrong" }}\n'
    )
    with gateway_factory(config) as gateway:
        send(gateway.port, ["b@elsewhere.org"])
        gateway.wait_for_log(r"to=<b@elsewhere\.org>.*status=deferred \(451 4\.7\.8 SASL authentication failed")
    assert tls_sink.messages == []


# The connection cache is per process (each worker keeps its own): these tests run one.
ONE_PROCESS_CACHE = 'smtp_connection_cache_time_limit = "10s"\nworkers = 1\n'


def test_connection_to_the_next_hop_is_reused(gateway_factory, sink):
    with gateway_factory(relay_config(sink.port, ONE_PROCESS_CACHE)) as gateway:
        for index in range(3):
            send(gateway.port, [f"r{index}@elsewhere.org"])
            sink.wait_for_messages(index + 1)
    assert len({message.peer for message in sink.messages}) == 1  # one TCP connection carried all three


def test_a_stale_cached_connection_is_replaced_without_deferring(gateway_factory, sink):
    # Cached sessions are reused without a probing RSET; a server that timed the idle session out
    # answers the next MAIL with 421 and closes: the gateway retries at once on a new connection.
    with gateway_factory(relay_config(sink.port, ONE_PROCESS_CACHE)) as gateway:
        send(gateway.port, ["first@elsewhere.org"])
        sink.wait_for_messages(1)
        gateway.wait_for_log(r"to=<first@elsewhere\.org>.*status=sent")
        sink.mail_replies.append("421 4.4.2 sink.test Error: timeout exceeded")
        send(gateway.port, ["second@elsewhere.org"])
        sink.wait_for_messages(2)
        [line] = gateway.wait_for_log(r"to=<second@elsewhere\.org>.*status=")
        assert "status=sent" in line and "attempts=1" in line
        assert not any("deferred" in entry for entry in gateway.lines)
    assert sink.mail_replies == []  # the 421 was given to the cached session
    assert sink.delivered == {"first@elsewhere.org": 1, "second@elsewhere.org": 1}
    assert len({message.peer for message in sink.messages}) == 2
