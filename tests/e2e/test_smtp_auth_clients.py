"""Every real client logs in and relays, against every password back end.

The clients users have: Python's smtplib, swaks, msmtp, curl and Postfix's smtp
client with ``smtp_sasl_password_maps`` (Debian packages), each with PLAIN and
LOGIN where it lets one choose, on a submission listener (587 style, STARTTLS)
and an implicit-TLS one (465 style). The back ends are real: a password file, a
Dovecot auth service on its socket (Debian dovecot-core) and OpenLDAP's slapd
with the user in the sender group. The client connects from an address outside
mynetworks, so only the login lets it relay; each message must reach the sink
DKIM-signed and received ``with ESMTPSA``. The back ends' own refusals are in
test_smtp_auth.py, test_smtp_auth_dovecot.py and test_smtp_auth_ldap.py.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from passlib.hash import bcrypt, sha512_crypt

from tests.harness.dovecot import DovecotAuthServer
from tests.harness.gateway_process import GatewayProcess
from tests.harness.helpers import client_tls, relay_config, swaks_login_and_send
from tests.harness.ports import free_port
from tests.harness.postfix import PostfixInstance
from tests.harness.slapd import SlapdServer
from tests.harness.smtp_sink import SmtpSink

OUTSIDER = "127.0.0.3"  # not in mynetworks
LOGIN, PASSWORD = "alice@example.com", "alice secret"
MESSAGE = "From: alice@example.com\r\nTo: someone@elsewhere.org\r\nSubject: {subject}\r\n\r\nbody\r\n"
LISTENERS = ["submission", "smtps"]


@dataclass(frozen=True)
class Backend:
    name: str
    auth_table: str  # the [auth] keys


@pytest.fixture(scope="module", params=["passwd_file", "dovecot", "ldap"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "passwd_file":
        passwd = tmp_path_factory.mktemp("passwd") / "passwd"
        passwd.write_text(f"{LOGIN}:{{BLF-CRYPT}}{bcrypt.using(rounds=5).hash(PASSWORD)}\n")
        yield Backend("passwd_file", f'backend = "passwd_file"\npasswd_file = "{passwd}"\n')
    elif request.param == "dovecot":
        with DovecotAuthServer(
            [f"{LOGIN}:{{SHA512-CRYPT}}{sha512_crypt.using(rounds=5000).hash(PASSWORD)}"]
        ) as dovecot:
            yield Backend("dovecot", f'backend = "dovecot"\nsmtpd_sasl_path = "{dovecot.socket_path}"\n')
    else:
        with SlapdServer({"alice": (LOGIN, PASSWORD, True)}) as slapd:
            yield Backend(
                "ldap",
                f'backend = "ldap"\nldap_url = "{slapd.url}"\n'
                'ldap_search_base = "ou=people,dc=example,dc=org"\nldap_filter = "(mail=%s)"\n'
                'ldap_group_filter = "(memberOf=cn=mail-senders,ou=groups,dc=example,dc=org)"\n',
            )


@pytest.fixture(scope="module")
def shared_sink(backend: Backend) -> Iterator[SmtpSink]:
    """One sink per back end (the gateway below relays to it); emptied before each test."""
    with SmtpSink() as server:
        yield server


@pytest.fixture(scope="module")
def shared_gateway(
    shared_sink: SmtpSink, backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway per back end, for every client and listener: submission (STARTTLS) and smtps
    (implicit TLS), both ``auth = "required"``; example.com signed."""
    ports = {name: free_port() for name in LISTENERS}
    config = relay_config(shared_sink.port, f'[auth]\n{backend.auth_table}[dkim]\ndomains = ["example.com"]\n')
    config += (
        f'[[listener]]\nname = "submission"\naddress = "127.0.0.1:{ports["submission"]}"\n'
        'tls = "starttls"\nauth = "required"\n'
        f'[[listener]]\nname = "smtps"\naddress = "127.0.0.1:{ports["smtps"]}"\ntls = "implicit"\n'
        'auth = "required"\n'
    )
    with GatewayProcess(tmp_path_factory.mktemp(f"gw-{backend.name}"), config) as started:
        started.ports = ports  # type: ignore[attr-defined]
        yield started


@pytest.fixture
def sink(shared_sink: SmtpSink) -> SmtpSink:
    shared_sink.reset()
    return shared_sink


@pytest.fixture
def gateway(shared_gateway: GatewayProcess, request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    """The back end's gateway; ``log_mark``: its log lines before this test (the log of a failed test is printed)."""
    shared_gateway.log_mark = len(shared_gateway.lines)  # type: ignore[attr-defined]
    yield shared_gateway
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(
            f"---- log of gateway {shared_gateway.state_dir.name} during the test ----\n"
            + "\n".join(shared_gateway.lines[shared_gateway.log_mark :])
        )  # type: ignore[attr-defined]


def assert_relayed_signed_esmtpsa(sink, gateway, mechanism: str = "(PLAIN|LOGIN)") -> None:
    """One message at the sink, DKIM-signed for example.com, ``with ESMTPSA``; the login logged as Postfix does."""
    (message,) = sink.wait_for_messages(1, timeout=60)
    assert message.rcpt_tos == ["someone@elsewhere.org"]
    head = message.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    signatures = [line for line in head.split(b"\r\n") if line.startswith(b"DKIM-Signature:")]
    assert len(signatures) == 1 and b" d=example.com;" in signatures[0], head
    assert b"with ESMTPSA id" in message.data and PASSWORD.encode() not in message.data
    login = rf"unknown\[{OUTSIDER}\]:\d+: sasl_method={mechanism}, sasl_username={LOGIN}"
    before = sum(1 for line in gateway.lines[: gateway.log_mark] if re.search(login, line))
    gateway.wait_for_log(login, count=before + 1)  # logged during this test


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("listener", LISTENERS)
def test_smtplib(gateway, sink, listener, mechanism):
    port = gateway.ports[listener]
    context = client_tls(gateway.ca_file)
    if listener == "smtps":
        client = smtplib.SMTP_SSL("127.0.0.1", port, source_address=(OUTSIDER, 0), timeout=30, context=context)
    else:
        client = smtplib.SMTP("127.0.0.1", port, source_address=(OUTSIDER, 0), timeout=30)
        client.starttls(context=context)
    with client:
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.user, client.password = LOGIN, PASSWORD
        code, text = client.auth(
            mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=mechanism == "PLAIN"
        )
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        assert (
            client.sendmail(LOGIN, ["someone@elsewhere.org"], MESSAGE.format(subject=f"smtplib {listener}").encode())
            == {}
        )
    assert_relayed_signed_esmtpsa(sink, gateway, mechanism)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("listener", LISTENERS)
def test_swaks(gateway, sink, listener, mechanism):
    result = swaks_login_and_send(
        gateway.ports[listener],
        mechanism=mechanism,
        user=LOGIN,
        password=PASSWORD,
        sender=LOGIN,
        recipient="someone@elsewhere.org",
        source=OUTSIDER,
        tls_option="--tls" if listener == "submission" else "--tlsc",
        subject=f"swaks {listener} {mechanism}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    assert_relayed_signed_esmtpsa(sink, gateway, mechanism)


@pytest.mark.parametrize("mechanism", ["plain", "login"])
@pytest.mark.parametrize("listener", LISTENERS)
def test_msmtp(gateway, sink, tmp_path, listener, mechanism):
    msmtp = shutil.which("msmtp")
    assert msmtp, "msmtp is installed by make test-peers (tests/peers/install-debian-packages.sh)"
    password_file = tmp_path / "msmtp-password"
    password_file.write_text(PASSWORD + "\n")
    result = subprocess.run(
        [
            msmtp,
            "--host=127.0.0.1",
            f"--port={gateway.ports[listener]}",
            "--tls=on",
            f"--tls-starttls={'on' if listener == 'submission' else 'off'}",
            f"--tls-trust-file={gateway.ca_file}",
            f"--auth={mechanism}",
            f"--user={LOGIN}",
            f"--passwordeval=cat {password_file}",
            "--source-ip=" + OUTSIDER,
            f"--from={LOGIN}",
            "someone@elsewhere.org",
        ],
        input=MESSAGE.format(subject=f"msmtp {listener} {mechanism}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_relayed_signed_esmtpsa(sink, gateway, mechanism.upper())


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("listener", LISTENERS)
def test_curl(gateway, sink, tmp_path, listener, mechanism):
    curl = shutil.which("curl")
    assert curl, "curl is installed by make test-peers (tests/peers/install-debian-packages.sh)"
    message_file = tmp_path / "message.eml"
    message_file.write_text(MESSAGE.format(subject=f"curl {listener} {mechanism}"))
    scheme = "smtp" if listener == "submission" else "smtps"
    result = subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "--url",
            f"{scheme}://127.0.0.1:{gateway.ports[listener]}",
            "--ssl-reqd",
            "--cacert",
            str(gateway.ca_file),
            "--interface",
            OUTSIDER,
            "--user",
            f"{LOGIN}:{PASSWORD}",
            "--login-options",
            f"AUTH={mechanism}",
            "--mail-from",
            LOGIN,
            "--mail-rcpt",
            "someone@elsewhere.org",
            "--upload-file",
            str(message_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_relayed_signed_esmtpsa(sink, gateway, mechanism)


def test_postfix_with_smtp_sasl_password_maps(gateway, sink):
    port = gateway.ports["submission"]
    settings = {
        "relayhost": f"[127.0.0.1]:{port}",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": "texthash:{folder}/sasl_passwd",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
        "smtp_bind_address": OUTSIDER,
    }
    with PostfixInstance(settings, {"sasl_passwd": f"[127.0.0.1]:{port} {LOGIN}:{PASSWORD}\n"}) as postfix:
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
            assert (
                client.sendmail(LOGIN, ["someone@elsewhere.org"], MESSAGE.format(subject="via Postfix").encode()) == {}
            )
        assert_relayed_signed_esmtpsa(sink, gateway)
