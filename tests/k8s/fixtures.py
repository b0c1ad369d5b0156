"""pytest plugin: a real control plane shared by the session.

Register it from the root conftest with ``pytest_plugins = ["tests.k8s.fixtures"]`` (or
``-p tests.k8s.fixtures``). The control plane starts lazily, only when a selected test asks
for it, so unit runs never pay for it. Its binaries are built by the test setup
(``hack/test-setup.sh``), never here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.k8s.envtest import ControlPlane


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
