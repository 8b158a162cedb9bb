"""ConnectionLimiter keys: an IPv4 address, or an IPv6 /64 (one host usually has a whole /64)."""

from __future__ import annotations

import pytest

from gateway.smtpd.connection_limits import ConnectionLimiter, client_key


@pytest.mark.parametrize(
    "host, key",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_client_key(host: str, key: str) -> None:
    assert client_key(host) == key


def test_addresses_of_one_ipv6_64_share_the_per_client_limit() -> None:
    limiter = ConnectionLimiter(total_limit=100, per_client_limit=2)
    keys = [client_key(f"2001:db8:1:2::{n:x}") for n in range(1, 4)]
    assert [limiter.try_acquire(key) for key in keys] == [True, True, False]
    assert limiter.try_acquire(client_key("2001:db8:1:3::1"))  # the next /64 is another client
    limiter.release(keys[0])
    assert limiter.try_acquire(keys[2]) and limiter.total == 3
