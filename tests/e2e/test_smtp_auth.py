"""SMTP AUTH on a submission (587, STARTTLS) and an implicit-TLS (465) listener, passwd_file back end.

Python's smtplib logs in over real TLS handshakes with a hash of each scheme the
password file reads, and the exchange's refusals, the sender binding, `gateway
passwd` and the brute-force throttle (with fail2ban-regex's stock filter) are
shown. The client connects from an address outside mynetworks, so only the
login can let it relay. swaks, msmtp, curl and Postfix against every back end:
test_smtp_auth_clients.py.
"""

from __future__ import annotations

import base64
import re
import shutil
import smtplib
import subprocess

import pytest
from passlib.hash import apr_md5_crypt, argon2, bcrypt, sha512_crypt

from tests.harness.helpers import client_tls, relay_config
from tests.harness.ports import free_port

OUTSIDER = "127.0.0.3"  # not in mynetworks
FAST_ARGON2 = argon2.using(type="ID", rounds=1, memory_cost=1024)  # cheap parameters: tests, not secrets
USERS = {
    "alice@example.com": "alice-secret",
    "bob": "bob secret with spaces",
    "carol": "carol-pw",
    "dave@example.com": "dave-pw",
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def passwd_text() -> str:
    return (
        "# Dovecot passwd-file and htpasswd lines\n"
        f"alice@example.com:{{BLF-CRYPT}}{bcrypt.using(rounds=5).hash(USERS['alice@example.com'])}::::::\n"
        f"bob:{{SHA512-CRYPT}}{sha512_crypt.using(rounds=5000).hash(USERS['bob'])}\n"
        f"carol:{apr_md5_crypt.hash(USERS['carol'])}\n"
        f"dave@example.com:{{ARGON2ID}}{FAST_ARGON2.hash(USERS['dave@example.com'])}\n"
    )


def start_auth_gateway(gateway_factory, sink, tmp_path, passwd_text, auth_extra: str = ""):
    """A gateway with listeners submission (587 style, auth required), smtps (465, optional), smtp (no auth)."""
    passwd = tmp_path / "passwd"
    passwd.write_text(passwd_text)
    ports = {"submission": free_port(), "smtps": free_port(), "smtp": free_port()}
    config = relay_config(
        sink.port,
        f'[auth]\nbackend = "passwd_file"\npasswd_file = "{passwd}"\n{auth_extra}[dkim]\ndomains = ["example.com"]\n',
    )
    config += (
        f'[[listener]]\nname = "submission"\naddress = "127.0.0.1:{ports["submission"]}"\n'
        'tls = "starttls"\nauth = "required"\n'
        f'[[listener]]\nname = "smtps"\naddress = "127.0.0.1:{ports["smtps"]}"\ntls = "implicit"\n'
        'auth = "optional"\n'
        f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{ports["smtp"]}"\ntls = "starttls"\n'
    )
    gateway = gateway_factory(config)
    gateway.ports = ports
    gateway.passwd = passwd
    return gateway


@pytest.fixture
def auth_gateway(gateway_factory, sink, tmp_path, passwd_text):
    with start_auth_gateway(gateway_factory, sink, tmp_path, passwd_text) as gateway:
        yield gateway


def assert_signed_and_esmtpsa(message) -> None:
    """The relayed message: DKIM-signed for example.com (outbound mail of a login) and received ``with ESMTPSA``."""
    head = message.data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    signatures = [line for line in head.split(b"\r\n") if line.startswith(b"DKIM-Signature:")]
    assert len(signatures) == 1 and b" d=example.com;" in signatures[0], head
    assert b"with ESMTPSA id" in message.data


def submission(gateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.ports["submission"], source_address=(OUTSIDER, 0), timeout=30)
    client.ehlo("client.test")
    client.starttls(context=client_tls(gateway.ca_file))
    client.ehlo("client.test")
    return client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_each_hash_scheme_logs_in_and_relays_signed_esmtpsa(auth_gateway, sink, mechanism):
    for number, (login, password) in enumerate(USERS.items()):
        with submission(auth_gateway) as client:
            assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            client.user, client.password = login, password
            code, text = client.auth(
                mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=mechanism == "PLAIN"
            )
            assert (code, text) == (235, b"2.7.0 Authentication successful")
            assert (
                client.sendmail(
                    "sender@example.com",
                    [f"r{number}@elsewhere.org"],
                    f"From: sender@example.com\r\nSubject: {login}\r\n\r\nbody\r\n".encode(),
                )
                == {}
            )
    messages = sink.wait_for_messages(len(USERS))
    for message in messages:
        assert_signed_and_esmtpsa(message)
        assert not any(password.encode() in message.data for password in USERS.values())
    auth_gateway.wait_for_log(rf"unknown\[{OUTSIDER}\]:\d+: sasl_method={mechanism}, sasl_username=bob")


def test_login_challenges_are_plain_words_and_mail_needs_auth_on_submission(auth_gateway):
    with submission(auth_gateway) as client:
        assert client.docmd("MAIL", "FROM:<sender@example.com>") == (530, b"5.7.0 Authentication required")
        assert client.docmd("AUTH", "LOGIN") == (334, b64("Username:").encode())
        assert client.docmd(b64("carol")) == (334, b64("Password:").encode())
        assert client.docmd(b64("carol-pw"))[0] == 235
        assert client.docmd("AUTH", "PLAIN " + b64("\0carol\0carol-pw")) == (503, b"5.5.1 Error: already authenticated")


def test_refusals_of_the_exchange(auth_gateway, sink):
    with submission(auth_gateway) as client:
        assert client.docmd("AUTH", "PLAIN " + b64("\0alice@example.com\0wrong")) == (
            535,
            b"5.7.8 Error: authentication failed: authentication failure",
        )
        assert client.docmd("AUTH", "PLAIN " + b64("\0nobody@example.com\0alice-secret"))[0] == 535
        assert client.docmd("AUTH", "PLAIN !!notbase64") == (501, b"5.5.2 Cannot decode response")
        assert client.docmd("AUTH", "LOGIN") == (334, b64("Username:").encode())
        assert client.docmd("*") == (501, b"5.7.0 Authentication exchange cancelled")
        assert client.docmd("AUTH", "CRAM-MD5") == (504, b"5.5.4 Unrecognized authentication type")
        assert client.docmd("AUTH") == (501, b"5.5.4 Syntax: AUTH mechanism [initial-response]")
        assert client.docmd("NOOP")[0] == 250  # the session goes on
    with submission(auth_gateway) as client:  # a new session: the third failure in one closes it (below)
        # an authorization identity other than the login is refused, even with the right password
        assert client.docmd("AUTH", "PLAIN " + b64("carol\0alice@example.com\0alice-secret"))[0] == 535
        assert client.docmd("AUTH", "PLAIN =")[0] == 535  # an empty initial response: no login in it
    auth_gateway.wait_for_log(
        rf"warning: unknown\[{OUTSIDER}\]: SASL PLAIN authentication failed: "
        r"authentication failure$",
        count=4,
    )
    log_text = "\n".join(auth_gateway.lines)
    assert "alice-secret" not in log_text and "wrong" not in log_text
    assert sink.messages == []


def test_auth_only_inside_tls_and_not_during_a_transaction(auth_gateway):
    with smtplib.SMTP(
        "127.0.0.1", auth_gateway.ports["submission"], source_address=(OUTSIDER, 0), timeout=30
    ) as client:
        client.ehlo("client.test")
        assert "auth" not in client.esmtp_features  # not offered before STARTTLS
        assert client.docmd("AUTH", "PLAIN " + b64("\0carol\0carol-pw")) == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
    with smtplib.SMTP("127.0.0.1", auth_gateway.ports["smtp"], source_address=(OUTSIDER, 0), timeout=30) as client:
        client.ehlo("client.test")
        client.starttls(context=client_tls(auth_gateway.ca_file))
        client.ehlo("client.test")
        assert "auth" not in client.esmtp_features  # a listener without auth
        assert client.docmd("AUTH", "PLAIN " + b64("\0carol\0carol-pw")) == (
            502,
            b"5.5.1 Error: authentication not enabled",
        )
    with smtplib.SMTP_SSL(
        "127.0.0.1",
        auth_gateway.ports["smtps"],
        source_address=(OUTSIDER, 0),
        timeout=30,
        context=client_tls(auth_gateway.ca_file),
    ) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]  # implicit TLS offers it
        assert client.docmd("MAIL", "FROM:<a@example.com>")[0] == 250  # optional here
        assert client.docmd("AUTH", "PLAIN " + b64("\0carol\0carol-pw")) == (
            503,
            b"5.5.1 Error: MAIL transaction in progress",
        )


def test_an_auth_parameter_grants_nothing(auth_gateway, sink):
    with smtplib.SMTP_SSL(
        "127.0.0.1",
        auth_gateway.ports["smtps"],
        source_address=(OUTSIDER, 0),
        timeout=30,
        context=client_tls(auth_gateway.ca_file),
    ) as client:
        client.ehlo("client.test")
        assert client.docmd("MAIL", "FROM:<alice@example.com> AUTH=<alice@example.com>")[0] == 250
        assert client.docmd("RCPT", "TO:<victim@elsewhere.org>")[0] == 554  # relay access denied
        client.docmd("RSET")
        assert client.docmd("AUTH", "PLAIN " + b64("\0carol\0carol-pw"))[0] == 235
        assert client.docmd("MAIL", "FROM:<carol@example.com> AUTH=<>")[0] == 250
        assert client.docmd("RCPT", "TO:<friend@elsewhere.org>")[0] == 250
        assert client.data(b"Subject: auth\r\n\r\nx\r\n")[0] == 250
    (message,) = sink.wait_for_messages(1)
    assert message.rcpt_tos == ["friend@elsewhere.org"]


def test_gateway_passwd_adds_and_changes_users_that_then_log_in(auth_gateway):
    def passwd(login: str, password: str, *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*auth_gateway.command("passwd"), login, *options],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=auth_gateway.env,
        )

    mode = auth_gateway.passwd.stat().st_mode & 0o777
    added = passwd("frank@example.com", "frank pw 1")
    assert added.returncode == 0 and added.stdout.startswith("added frank@example.com in "), added
    assert "frank pw" not in added.stdout + added.stderr
    changed = passwd("carol", "carol-new", "--scheme", "argon2id")
    assert changed.returncode == 0 and changed.stdout.startswith("changed the password of carol"), changed
    text = auth_gateway.passwd.read_text()
    assert "frank@example.com:{BLF-CRYPT}$2y$12$" in text and "carol:{ARGON2ID}$argon2id$" in text
    assert auth_gateway.passwd.stat().st_mode & 0o777 == mode  # replaced in one rename, mode kept
    for login, password, code in [
        ("frank@example.com", "frank pw 1", 235),
        ("carol", "carol-new", 235),
        ("carol", "carol-pw", 535),
        ("bob", USERS["bob"], 235),
    ]:
        with submission(auth_gateway) as client:
            assert client.docmd("AUTH", "PLAIN " + b64(f"\0{login}\0{password}"))[0] == code, login
    for bad_login, password, complaint in [
        ("with:colon", "x", "login 'with:colon'"),
        ("white space", "x", "login 'white space'"),
        ("erin", "", "an empty password is refused"),
    ]:
        refused = passwd(bad_login, password)
        assert refused.returncode == 1 and complaint in refused.stderr, refused
    assert "erin" not in auth_gateway.passwd.read_text()


def test_an_edited_password_file_applies_without_a_reload(auth_gateway, passwd_text):
    auth_gateway.passwd.write_text(passwd_text + f"erin:{sha512_crypt.using(rounds=5000).hash('erin-pw')}\n")
    with submission(auth_gateway) as client:
        assert client.docmd("AUTH", "PLAIN " + b64("\0erin\0erin-pw"))[0] == 235
    auth_gateway.wait_for_log(r"read again: 5 users")


def test_a_login_sends_only_as_the_addresses_it_owns(gateway_factory, sink, tmp_path, passwd_text):
    table = tmp_path / "sender_logins"
    table.write_text(
        "# address   logins\n"
        "alice@example.com  alice@example.com\n"
        "sales@example.com  alice@example.com, BOB\n"
        "@example.org\tcarol\n"
        "postmaster         bob\n"
    )
    with start_auth_gateway(
        gateway_factory, sink, tmp_path, passwd_text, f'smtpd_sender_login_maps = "{table}"\n'
    ) as gateway:
        expected = {
            ("alice@example.com", "Alice@Example.com"): 250,
            ("alice@example.com", "sales@example.com"): 250,
            ("bob", "sales@example.com"): 250,
            ("bob", "postmaster@example.net"): 250,
            ("carol", "anyone@example.org"): 250,
            ("carol", "alice@example.com"): 553,
            ("bob", "alice@example.com"): 553,
            ("alice@example.com", "unlisted@example.com"): 553,
            ("alice@example.com", ""): 250,
        }
        for (login, sender), code in expected.items():
            with submission(gateway) as client:
                assert client.docmd("AUTH", "PLAIN " + b64(f"\0{login}\0{USERS[login]}"))[0] == 235
                reply = client.docmd("MAIL", f"FROM:<{sender}>")
                assert reply[0] == code, (login, sender, reply)
                if code == 553:
                    assert (
                        reply[1] == (f"5.7.1 <{sender}>: Sender address rejected: not owned by user {login}").encode()
                    )
        gateway.wait_for_log(r"reject: MAIL from .*553 5\.7\.1 <unlisted@example\.com>: Sender address rejected")


def test_check_from_header_holds_the_author_to_the_login(gateway_factory, sink, tmp_path, passwd_text):
    table = tmp_path / "sender_logins"
    table.write_text("alice@example.com  alice@example.com\nsales@example.com  alice@example.com, bob\n")
    with start_auth_gateway(
        gateway_factory, sink, tmp_path, passwd_text, f'smtpd_sender_login_maps = "{table}"\ncheck_from_header = true\n'
    ) as gateway:
        for login, author, code in [
            ("alice@example.com", "Sales <sales@example.com>", 250),
            ("bob", "Alice <alice@example.com>", 550),
            ("bob", "undisclosed-recipients:;", 550),
        ]:
            with submission(gateway) as client:
                assert client.docmd("AUTH", "PLAIN " + b64(f"\0{login}\0{USERS[login]}"))[0] == 235
                assert client.docmd("MAIL", "FROM:<sales@example.com>")[0] == 250  # the envelope is owned
                assert client.docmd("RCPT", "TO:<someone@elsewhere.org>")[0] == 250
                assert client.docmd("DATA")[0] == 354
                client.send(f"From: {author}\r\nSubject: author\r\n\r\nbody\r\n.\r\n".encode())
                reply = client.getreply()
                assert reply[0] == code, (login, author, reply)
                if code == 550:
                    shown = "<alice@example.com>" if "alice" in author else "<>"
                    assert (
                        reply[1] == f"5.7.1 {shown}: From: header address rejected: not owned by user {login}".encode()
                    )
        (message,) = sink.wait_for_messages(1)
        assert b"From: Sales <sales@example.com>" in message.data
        gateway.wait_for_log(
            r"sasl_username=bob, result=reject \(550 5\.7\.1 <alice@example\.com>: From: header "
            r"address rejected: not owned by user bob\) reason=from_login_mismatch"
        )


def test_brute_force_is_throttled_and_fail2ban_counts_exactly_the_failures(auth_gateway, tmp_path):
    def attempt(client: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
        try:
            return client.docmd("AUTH", "PLAIN " + b64(f"\0{login}\0{password}"))
        except smtplib.SMTPServerDisconnected:
            return 0, b"closed"

    replies = []
    client = submission(auth_gateway)
    for number in range(20):  # twenty wrong passwords in a row from one address
        reply = attempt(client, "alice@example.com", f"guess-{number}")
        replies.append(reply[0])
        if reply[0] == 421:  # the session's third failure: closed, and the attacker connects again
            assert reply[1] == b"4.7.0 Error: too many failed logins, closing transmission channel"
            client.close()
            client = submission(auth_gateway)
    # the right password now gets no check either: no oracle for a throttled client
    assert attempt(client, "alice@example.com", USERS["alice@example.com"]) == (
        454,
        b"4.7.0 Error: too many failed logins, try again later",
    )
    client.close()
    assert replies[:10] == [535, 535, 421] * 3 + [535] and replies[10:] == [454] * 10
    # the attacked login is slowed from another address too; other logins from there are not
    with smtplib.SMTP(
        "127.0.0.1", auth_gateway.ports["submission"], source_address=("127.0.0.4", 0), timeout=30
    ) as other:
        other.ehlo("other.test")
        other.starttls(context=client_tls(auth_gateway.ca_file))
        other.ehlo("other.test")
        assert attempt(other, "alice@example.com", USERS["alice@example.com"])[0] == 454
        assert attempt(other, "carol", USERS["carol"])[0] == 235
    auth_gateway.wait_for_log(r"AUTH refused: login 'alice@example.com' has had 10 or more failed logins")
    # fail2ban's stock filter for Postfix SASL failures finds exactly the ten failures, all from the attacker
    log_file = tmp_path / "gateway.log"
    log_file.write_text("\n".join(auth_gateway.lines) + "\n")
    fail2ban = shutil.which("fail2ban-regex")
    assert fail2ban, "fail2ban is installed by make test-peers (tests/peers/install-debian-packages.sh)"
    result = subprocess.run(
        [fail2ban, "--print-all-matched", str(log_file), "postfix[mode=auth]"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    matched = re.search(r"Lines: \d+ lines, \d+ ignored, (\d+) matched", result.stdout)
    assert matched and int(matched.group(1)) == 10, result.stdout[-3000:]
    hosts = re.findall(r"unknown\[([0-9.]+)\]: SASL PLAIN authentication failed", result.stdout)
    assert hosts == [OUTSIDER] * 10
