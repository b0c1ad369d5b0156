"""pytest plugin: a real control plane shared by the session.

Register it from the root conftest with ``pytest_plugins = ["tests.k8s.fixtures"]`` (or
``-p tests.k8s.fixtures``). The control plane starts lazily, only when a selected test asks
for it, so unit runs never pay for it; its binaries are built (first run only) right after
collection, outside any per-test timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.k8s.envtest import ControlPlane, ControlPlaneError, ensure_binaries


def prebuild_binaries(session: pytest.Session, why: str) -> None:
    """Build or find the control-plane binaries now; a failure is reported by the fixture."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    began = time.monotonic()
    built: list[Path] = []

    def announce(log: Path) -> None:
        built.append(log)
        if reporter is not None:
            reporter.write_line(
                f"envtest: building control-plane binaries ({why}); a cold build takes 7-10 min "
                f"on 2 cores; progress in {log}"
            )

    try:
        ensure_binaries(with_controllers=True, on_build=announce)
    except ControlPlaneError as exc:
        if reporter is not None:
            reporter.write_line(f"envtest: binaries unavailable ({why}): {str(exc)[:500]}", yellow=True)
        return
    elapsed = time.monotonic() - began
    if reporter is not None and built:
        reporter.write_line(f"envtest: built control-plane binaries in {elapsed:.0f}s ({why})")


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        prebuild_binaries(session, "a selected test uses control_plane")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, one per session."""
    with ControlPlane(controllers=True) as plane:
        yield plane


@pytest.fixture(scope="session")
def admin_kubeconfig(control_plane: ControlPlane) -> Path:
    """Path of the cluster-admin kubeconfig (CN=admin, O=system:masters)."""
    return control_plane.admin_kubeconfig


@pytest.fixture
def admin_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """A cluster-admin ``kubernetes.client.ApiClient``, closed after the test."""
    with control_plane.api_client() as api:
        yield api
