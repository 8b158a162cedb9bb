"""gateway.addresses: the domain a relay decision routes to, and local parts that route on."""

from __future__ import annotations

import pytest

from gateway.addresses import Mailbox, domain_matches, has_routing_tricks, split_mailbox


@pytest.mark.parametrize(
    ("address", "local", "domain"),
    [
        ("user@example.com", "user", "example.com"),
        ("User.Name+tag@Example.COM", "User.Name+tag", "example.com"),
        ("user@example.com.", "user", "example.com"),
        ('"user@other.example"@example.com', '"user@other.example"', "example.com"),
        ('"a\\"@b"@example.com', '"a\\"@b"', "example.com"),
        ('"a b"@example.com', '"a b"', "example.com"),
        ("user\\@other@example.com", "user\\@other", "example.com"),
        ("user%other.example@example.com", "user%other.example", "example.com"),
        ("a@b@example.com", "a@b", "example.com"),
        ("user@[192.0.2.1]", "user", "[192.0.2.1]"),
        ("user@[IPv6:2001:db8::1]", "user", "[ipv6:2001:db8::1]"),
        ("用户@例子.广告", "用户", "例子.广告"),
        ("user@Bücher.Example", "user", "bücher.example"),
        ("user@xn--bcher-kva.example", "user", "xn--bcher-kva.example"),
    ],
)
def test_split_mailbox(address: str, local: str, domain: str) -> None:
    mailbox = split_mailbox(address)
    assert mailbox == Mailbox(local, domain)
    assert str(mailbox) == f"{local}@{domain}"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "user",
        "@example.com",
        "user@",
        '"user@example.com"',
        '"unterminated@example.com',
        "user@[192.0.2.1",
        "@",
        "x@[999.999.999.999]",
        "x@[192.0.2]",
        "x@[IPv6:2001:db8::zz]",
        "x@[tag:text]",
        "x@[]",
    ],
)
def test_split_mailbox_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        split_mailbox(address)


# Regression: emptiness used to be checked before stripping the trailing dot ('user@.' gave domain '').
@pytest.mark.parametrize("address", ["user@.", "user@.."])
def test_split_mailbox_rejects_domain_of_only_dots(address: str) -> None:
    with pytest.raises(ValueError):
        split_mailbox(address)


def test_mailbox_str_without_domain() -> None:
    assert str(Mailbox("postmaster", "")) == "postmaster"


@pytest.mark.parametrize(
    ("address", "tricky"),
    [
        ("user@example.com", False),
        ("first.last+tag@example.com", False),
        ('"first last"@example.com', False),
        ("user%other.example@example.com", True),
        ("other.example!user@example.com", True),
        ('"user@other.example"@example.com', True),
        ('"user%other"@example.com', True),
        ('"a!b"@example.com', True),
        ("user\\@other@example.com", True),
        ("%@example.com", True),
    ],
)
def test_has_routing_tricks(address: str, tricky: bool) -> None:
    assert has_routing_tricks(split_mailbox(address)) is tricky


@pytest.mark.parametrize(
    ("domain", "patterns", "matches"),
    [
        ("example.com", ("example.com",), True),
        ("EXAMPLE.com.", ("example.com",), True),
        ("sub.example.com", ("example.com",), False),
        ("example.com", (".example.com",), False),
        ("sub.example.com", (".example.com",), True),
        ("a.b.example.com", (".example.com",), True),
        ("notexample.com", (".example.com",), False),
        ("notexample.com", ("example.com",), False),
        ("example.com.evil", ("example.com",), False),
        ("example.org", ("example.com", "example.org"), True),
        ("example.org", (), False),
        ("", ("example.com", ".example.com"), False),
    ],
)
def test_domain_matches(domain: str, patterns: tuple[str, ...], matches: bool) -> None:
    assert domain_matches(domain, patterns) is matches


@pytest.mark.parametrize("address", ["x@[192.0.2.1]", "x@[IPv6:2001:db8::1]", "x@[ipv6:::1]"])
def test_split_mailbox_takes_valid_address_literals(address: str) -> None:
    assert split_mailbox(address).domain == address.partition("@")[2].lower()
