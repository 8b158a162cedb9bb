"""``gateway explain`` agrees with the server: for each relay-access and recipient case, the same replies.

One configuration (mynetworks, relay_domains, a routing trick, SMTP AUTH logins,
relay_recipient_maps, virtual_alias_maps, transport_maps, a relayhost) is run by
a real gateway; each case is a real SMTP session from a loopback address (with
a real AUTH login where the case has one) and the same question put to
``gateway explain`` with that config. The reply code and enhanced status of
MAIL and of every RCPT must be the same, and explain's exit status must say
whether any recipient was taken. Explain's words are checked for the rules it
names.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess

import pytest
from passlib.hash import bcrypt

from tests.harness.helpers import client_tls, relay_config
from tests.harness.ports import free_port

TRUSTED, OUTSIDER = "127.0.0.1", "127.0.0.3"
RECIPIENTS = "adam@example.com\nbob@example.com\n@lists.example.org\n"
ALIASES = (
    "support@example.com adam@example.com, bob@example.com\nsales@example.com nobody@example.com\n"
    "forward@example.com friend@elsewhere.test\n"
)
CASES = [  # (source, login, sender, recipients)
    (TRUSTED, None, "a@inside.test", ["x@elsewhere.test", "adam@example.com", "nobody@example.com"]),
    (
        OUTSIDER,
        None,
        "a@outside.test",
        [
            "x@elsewhere.test",
            "adam@example.com",
            "nobody@example.com",
            "anyone@lists.example.org",
            "adam+tag@example.com",
        ],
    ),
    (OUTSIDER, None, "a@outside.test", ["support@example.com", "sales@example.com", "forward@example.com"]),
    (OUTSIDER, None, "a@outside.test", ["user%elsewhere.test@example.com", "x@elsewhere.test"]),
    (OUTSIDER, None, "sender@[999.1.1.1]", ["adam@example.com"]),  # an invalid address literal
    (OUTSIDER, None, "a@outside.test", ["x@[999.1.1.1]", "bob@example.com"]),
    (OUTSIDER, "alice@example.com", "alice@example.com", ["x@elsewhere.test", "nobody@example.com"]),
]


@pytest.fixture(scope="module")
def explained_gateway(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("explain")
    (folder / "relay_recipients").write_text(RECIPIENTS)
    (folder / "virtual").write_text(ALIASES)
    (folder / "passwd").write_text(f"alice@example.com:{{BLF-CRYPT}}{bcrypt.using(rounds=5).hash('alice-pw')}\n")
    return folder


def start(gateway_factory, folder, sink_port: int):
    ports = {"smtp": free_port(), "submission": free_port()}
    config = relay_config(
        sink_port,
        f'[auth]\nbackend = "passwd_file"\npasswd_file = "{folder}/passwd"\n',
        relay_domains='["example.com", "lists.example.org"]',
        relay_recipient_maps=f'["{folder}/relay_recipients"]',
        virtual_alias_maps=f'["{folder}/virtual"]',
        transport_maps='{ "lists.example.org" = "[127.0.0.1]:2525" }',
    )
    config += (
        f'[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{ports["smtp"]}"\ntls = "starttls"\n'
        f'[[listener]]\nname = "submission"\naddress = "127.0.0.1:{ports["submission"]}"\n'
        'tls = "starttls"\nauth = "optional"\n'
    )
    gateway = gateway_factory(config)
    gateway.ports = ports
    return gateway


def status_of(code: int, text: bytes | str) -> str:
    text = text.decode() if isinstance(text, bytes) else text
    return f"{code} {text.split()[0]}" if re.match(r"\d\.\d+\.\d+", text) else str(code)


def server_answers(gateway, source, login, sender, recipients) -> tuple[str, dict[str, str]]:
    listener = "submission" if login else "smtp"
    with smtplib.SMTP("127.0.0.1", gateway.ports[listener], source_address=(source, 0), timeout=30) as client:
        client.ehlo("client.example")
        if login:
            client.starttls(context=client_tls(gateway.ca_file))
            client.ehlo("client.example")
            plain = base64.b64encode(f"\0{login}\0alice-pw".encode()).decode()
            assert client.docmd("AUTH", "PLAIN " + plain)[0] == 235
        mail = status_of(*client.docmd("MAIL", f"FROM:<{sender}>"))
        if not mail.startswith("250"):
            return mail, {}
        return mail, {address: status_of(*client.docmd("RCPT", f"TO:<{address}>")) for address in recipients}


def explain(gateway, source, login, sender, recipients) -> tuple[subprocess.CompletedProcess[str], str, dict[str, str]]:
    args = ["explain", "--client", source, "--from", sender, "--helo", "client.example"]
    for address in recipients:
        args += ["--to", address]
    if login:
        args += ["--login", login, "--listener", "submission"]
    done = gateway.cli(*args, check=False)
    mail = re.search(r"^MAIL FROM:<[^\n]*?>: (\d{3}) (\d\.\d+\.\d+)?", done.stdout, re.M)
    rcpts = {
        m.group(1): f"{m.group(2)} {m.group(3)}".strip()
        for m in re.finditer(r"^RCPT TO:<(.*?)>: (\d{3}) (\d\.\d+\.\d+)?", done.stdout, re.M)
    }
    return done, f"{mail.group(1)} {mail.group(2) or ''}".strip() if mail else "", rcpts


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1] or 'nologin'}-{c[3][0]}" for c in CASES])
def test_explain_gives_the_servers_replies(gateway_factory, sink, explained_gateway, case):
    source, login, sender, recipients = case
    with start(gateway_factory, explained_gateway, sink.port) as gateway:
        mail, rcpts = server_answers(gateway, source, login, sender, recipients)
        done, explained_mail, explained_rcpts = explain(gateway, source, login, sender, recipients)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert explained_mail == mail, done.stdout
    assert explained_rcpts == rcpts, done.stdout
    any_taken = any(reply.startswith("250") for reply in rcpts.values())
    assert done.returncode == (0 if any_taken else 1), done.stdout


def test_explain_names_the_rules_and_the_next_hops(gateway_factory, sink, explained_gateway):
    with start(gateway_factory, explained_gateway, sink.port) as gateway:
        outside, _, _ = explain(
            gateway,
            OUTSIDER,
            None,
            "a@outside.test",
            ["support@example.com", "nobody@example.com", "anyone@lists.example.org"],
        )
        inside, _, _ = explain(gateway, TRUSTED, None, "a@inside.test", ["x@elsewhere.test"])
        denied, _, _ = explain(gateway, OUTSIDER, None, "a@outside.test", ["x@elsewhere.test"])
        gateway_line = server_answers(gateway, OUTSIDER, None, "a@outside.test", ["x@elsewhere.test"])
        assert gateway_line[1] == {"x@elsewhere.test": "554 5.7.1"}
        gateway.wait_for_log(r"554 5\.7\.1 <x@elsewhere\.test>: Relay access denied; .* rule=reject_unauth_destination")
    assert "client 127.0.0.3: not trusted" in outside.stdout
    assert "inbound mail, the inbound pipeline runs at DATA" in outside.stdout
    assert (
        "RCPT TO:<support@example.com>: 250 2.1.5 Ok, delivered to adam@example.com, bob@example.com "
        "(virtual_alias_maps)" in outside.stdout
    )
    assert re.search(
        r"RCPT TO:<nobody@example.com>: 550 5\.1\.1 .*reason=user_unknown rule=relay_recipient_maps", outside.stdout
    )
    assert "anyone@lists.example.org: next hop [127.0.0.1]:2525 (transport_maps)" in outside.stdout
    assert (
        "RCPT TO:<x@elsewhere.test>: 554 5.7.1 <x@elsewhere.test>: Relay access denied "
        "(reason=relay_denied rule=reject_unauth_destination)"
    ) in denied.stdout
    assert "client 127.0.0.1: trusted by mynetworks 127.0.0.1/32" in inside.stdout
    assert re.search(r"x@elsewhere.test: next hop \[127\.0\.0\.1\]:\d+ \(relayhost\)", inside.stdout)
    assert "outbound mail" in inside.stdout and inside.returncode == 0
