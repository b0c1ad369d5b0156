"""Shared fixtures: a real NATS server per test (fresh JetStream state), a real Redis where asked for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.nats_server import NatsServer
from tests.support.redis_server import redis_server  # noqa: F401 - fixture for every test

#: The real Kubernetes control plane (session-scoped; started only by tests that ask for it).
pytest_plugins = ["tests.k8s.fixtures"]


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
