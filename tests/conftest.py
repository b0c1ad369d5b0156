"""Shared fixtures: a real NATS server per test (fresh JetStream state), a real Redis where asked for.

Also the suite's no-silent-skips rule: every tier's dependency is installed by the test setup
(``hack/test-setup.sh``), so a skipped test means a tier did not really run, and the run fails
with the skip reasons printed. ``LOOM_ALLOW_SKIPS=1`` opts out, for a partial run by hand.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from tests.support.nats_server import NatsServer
from tests.support.redis_server import redis_server  # noqa: F401 - fixture for every test

#: The real Kubernetes control plane (session-scoped; started only by tests that ask for it).
pytest_plugins = ["tests.k8s.fixtures"]

_SKIPPED: list[str] = []
#: Lines of each role process's log shown with a failed test.
_LOG_TAIL = 60


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for one test."""
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """URL of the test's NATS server."""
    return nats_server.url


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and exitstatus == pytest.ExitCode.OK and os.environ.get("LOOM_ALLOW_SKIPS") != "1":
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SKIPPED or os.environ.get("LOOM_ALLOW_SKIPS") == "1":
        return
    terminalreporter.section("skipped tests fail the run", sep="=", red=True)
    for line in _SKIPPED:
        terminalreporter.write_line(line)
    terminalreporter.write_line(
        "Every tier's dependency is installed by `bash hack/test-setup.sh` (part of `make test`); "
        "set LOOM_ALLOW_SKIPS=1 for a partial run by hand."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test shows where its NATS server's messages sit and the end of each ``loom`` role
    process's log."""
    report: pytest.TestReport = yield
    if not report.failed:
        return report
    fixtures = getattr(item, "funcargs", {})
    server = fixtures.get("nats_server")
    if isinstance(server, NatsServer) and server.proc is not None and server.proc.poll() is None:
        report.sections.append(("JetStream at the failure", server.jetstream_snapshot()))
    procs = fixtures.get("loom_procs")
    if procs is not None:
        for p in procs.procs:
            lines = p.log().splitlines()[-_LOG_TAIL:]
            report.sections.append((f"log of loom {' '.join(p.args[:3])} (pid {p.pid})", "\n".join(lines)))
    return report
