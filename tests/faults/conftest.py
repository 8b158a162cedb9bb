"""Every fault test runs twice: against one gateway process and against a supervisor with two workers.

The worker processes change what a fault hits (a SIGKILL lands on one worker
of two, limits are shared over a table, the spool has one ``active.<slot>/`` per
worker), so each fault's promise (nothing acknowledged is lost, clear replies,
no crash) is checked in both shapes. ``pytest --gateway-workers N`` runs them
once, with N.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.gateway_process import GatewayProcess

SHAPES = (1, 2)  # workers


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fault_workers" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--gateway-workers")
        shapes = (chosen,) if chosen is not None else SHAPES
        # module scope: a module's shared gateway and sink (which depend on it) are made per shape
        metafunc.parametrize("fault_workers", shapes, ids=[f"workers{n}" for n in shapes], scope="module")


@pytest.fixture(scope="module", autouse=True)
def fault_workers(request: pytest.FixtureRequest) -> Iterator[int]:
    """``workers`` of every gateway the tests start (unless a config sets ``workers``), per module and shape."""
    before = GatewayProcess.default_workers
    GatewayProcess.default_workers = request.param
    try:
        yield request.param
    finally:
        GatewayProcess.default_workers = before
