"""Shared fixtures: a relayhost sink and a gateway subprocess factory (helpers: tests/harness/helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.gateway_process import GatewayProcess
from tests.harness.ports import free_port
from tests.harness.smtp_sink import SmtpSink

pytest_plugins = ["tests.harness.clamd", "tests.harness.spam_daemons"]  # daemon fixtures


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--gateway-workers",
        type=int,
        default=None,
        help="run every gateway of the tests with `workers = N` (unless a test sets workers)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--gateway-workers") is not None:
        GatewayProcess.default_workers = config.getoption("--gateway-workers")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A running SMTP sink on 127.0.0.1 acting as relayhost."""
    with SmtpSink() as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Remember each phase's report on the test item (used to print gateway logs of failed tests)."""
    outcome = yield
    setattr(item, f"report_{call.when}", outcome.get_result())


@pytest.fixture
def gateway_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., GatewayProcess]]:
    """Build (not start) gateway processes; all are stopped at teardown.

    ``make(config_text, port=None, name="gw")`` returns a GatewayProcess whose
    config has a STARTTLS listener on 127.0.0.1:<port> (free port when None)
    prepended unless ``config_text`` defines listeners itself; ``.port`` is set.
    """
    made: list[GatewayProcess] = []

    def make(
        config_text: str = "", *, port: int | None = None, name: str = "gw", env: dict[str, str] | None = None
    ) -> GatewayProcess:
        port = port or free_port()
        text = config_text
        if "[[listener]]" not in config_text:
            text = config_text + f'\n[[listener]]\nname = "smtp"\naddress = "127.0.0.1:{port}"\ntls = "starttls"\n'
        gateway = GatewayProcess(tmp_path / name, text, env)
        gateway.port = port  # type: ignore[attr-defined]
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for gateway in made:
            print(f"---- log of gateway {gateway.state_dir.name} ----\n{gateway.log_text}")
