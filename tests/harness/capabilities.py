"""What to do when this machine lacks something a test needs (IPv6 loopback, tmpfs mounts, TLS 1.1).

A missing capability fails the test, so a check that silently stopped running is seen. A
machine that really cannot provide it names it in ``GATEWAY_TEST_WITHOUT`` (comma list, e.g.
``GATEWAY_TEST_WITHOUT=ipv6,tmpfs``) and the test is skipped there with the reason.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

KNOWN = ("ipv6", "tmpfs", "tls11")
ENV = "GATEWAY_TEST_WITHOUT"


def missing(capability: str, why: str) -> NoReturn:
    """Fail (default) or skip (when ``capability`` is listed in ``GATEWAY_TEST_WITHOUT``) with ``why``."""
    assert capability in KNOWN, capability
    allowed = {name.strip() for name in os.environ.get(ENV, "").split(",")}
    if capability in allowed:
        pytest.skip(f"{why} ({ENV} lists {capability})")
    pytest.fail(f"{why}; on a machine that cannot provide it set {ENV}={capability}")
