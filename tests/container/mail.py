"""Mail helpers of the container tests: send one message, read the TXT records ``gateway dkim show`` prints,
verify a DKIM signature against them (dkimpy, with those records instead of DNS)."""

from __future__ import annotations

import re
import smtplib
from email.message import EmailMessage

import dkim

SENDER, RECIPIENT = "alice@example.com", "bob@example.org"


def send(port: int, subject: str, host: str = "127.0.0.1") -> str:
    """One message from ``SENDER`` to ``RECIPIENT`` with STARTTLS to ``host:port``; the queue ID of the 250 reply.

    Raises:
        AssertionError: DATA was not answered 250, or the reply names no queue ID.
        smtplib.SMTPException, OSError: the session failed earlier.
    """
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER, RECIPIENT, subject
    message.set_content(f"{subject}\n")
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.starttls()  # the gateway's own certificate: not verified here, the client is the test
        client.ehlo("client.example.com")
        client.mail(SENDER)
        client.rcpt(RECIPIENT)
        code, reply = client.data(message.as_bytes())
    assert code == 250, reply
    match = re.search(rb"queued as (\S+)", reply)
    assert match, reply
    return match.group(1).decode()


def dkim_records(dkim_show_output: str) -> dict[str, str]:
    """The TXT records in ``gateway dkim show``'s output: ``{"default._domainkey.example.com": "v=DKIM1; ..."}``."""
    records = {}
    for line in dkim_show_output.splitlines():
        match = re.search(r"(\S+)\.\s+IN TXT \( (.*) \)", line)
        if match:
            records[match.group(1)] = "".join(re.findall(r'"([^"]*)"', match.group(2)))
    return records


def dkim_verifies(data: bytes, records: dict[str, str]) -> bool:
    """dkimpy's verdict on the message's DKIM-Signature, its key looked up in ``records`` instead of DNS."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return records[name.decode().rstrip(".")].encode()

    return bool(dkim.verify(data, dnsfunc=dnsfunc))
