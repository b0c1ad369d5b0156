"""End-to-end fixtures: the same tests against any cluster behind a kubeconfig.

Which cluster (first match wins):

- ``LOOM_E2E_KUBECONFIG=/path``: an existing cluster, used as-is and never deleted
  (``hack/e2e-kind.sh`` sets this after creating kind and installing the chart);
- ``LOOM_E2E_PROVIDER=envtest`` (default): the local control plane from ``tests.k8s``
  (etcd + kube-apiserver + controller-manager + scheduler + kwok, no Docker);
- ``LOOM_E2E_PROVIDER=kind``: a throwaway kind cluster, when ``docker`` and ``kind`` are on
  PATH and the Docker daemon answers; otherwise the tests fail and say why;
- ``LOOM_E2E_PROVIDER=node``: the envtest control plane plus one real node (containerd,
  kubelet, kube-proxy, CoreDNS; ``tests.k8s.node``), pods running the project's image.

The ``test_node_*.py`` files always run on that real node (the ``node_cluster`` fixture,
started once per session and torn down after it), whatever the provider, because kwok runs no
container: they are part of every ``pytest`` run and need root and ``hack/test-setup.sh node``
(a machine that cannot run the node fails them and says what is missing). Only against a
cluster of one's own (``LOOM_E2E_KUBECONFIG``, ``kind``) are they left out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.k8s.envtest import ControlPlane
from tests.k8s.node import NodeCluster

PROVIDERS = ("envtest", "kind", "node")
PROVIDER = os.environ.get("LOOM_E2E_PROVIDER", "envtest")

# Tests that need real pods start the node themselves; left out only for a cluster of one's own.
collect_ignore_glob = (
    ["test_node_*.py"] if PROVIDER == "kind" or os.environ.get("LOOM_E2E_KUBECONFIG") else []
)
KIND_CREATE_TIMEOUT = 600


def _kind_unavailable() -> str | None:
    """Why a kind cluster cannot be made here, or None when it can."""
    for tool in ("docker", "kind"):
        if shutil.which(tool) is None:
            return f"kind provider needs `{tool}` on PATH"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "kind provider: `docker info` did not answer within 20s"
    if info.returncode != 0:
        detail = (info.stderr or info.stdout).strip().splitlines()
        return f"kind provider: Docker daemon not reachable ({detail[-1] if detail else 'no output'})"
    return None


def _envtest_cluster(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Reuse the session control plane from tests.k8s.fixtures, or start one for e2e."""
    try:
        plane: ControlPlane = request.getfixturevalue("control_plane")
    except pytest.FixtureLookupError:
        with ControlPlane(controllers=True) as own:
            yield own.admin_kubeconfig
        return
    yield plane.admin_kubeconfig


def _kind_cluster(tmp_dir: Path) -> Iterator[Path]:
    reason = _kind_unavailable()
    if reason:
        pytest.fail(f"LOOM_E2E_PROVIDER=kind was asked for, but {reason}")
    name = f"loom-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_dir / "kind.kubeconfig"
    subprocess.run(
        ["kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "180s"],
        check=True,
        timeout=KIND_CREATE_TIMEOUT,
    )
    try:
        yield kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], check=False, timeout=300)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Kubeconfig path of the cluster under test (cluster-admin rights)."""
    existing = os.environ.get("LOOM_E2E_KUBECONFIG")
    if existing:
        yield Path(existing)
        return
    provider = PROVIDER
    if provider == "node":
        yield request.getfixturevalue("node_cluster").kubeconfig
    elif provider == "envtest":
        yield from _envtest_cluster(request)
    elif provider == "kind":
        yield from _kind_cluster(tmp_path_factory.mktemp("kind"))
    else:
        raise pytest.UsageError(f"LOOM_E2E_PROVIDER={provider!r}; expected one of {PROVIDERS}")


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """The control plane plus one real node, started once per session and torn down after.

    Torn down early, right after the last test that uses it (``pytest_runtest_teardown``
    below), so its pods stop taking CPU from the tests that come after.
    """
    with NodeCluster() as node:
        _NODE[:] = [node]
        yield node


_NODE: list[NodeCluster] = []
_LAST_NODE_TEST: list[pytest.Item] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # With the node provider, `cluster` is the node too (asked for with getfixturevalue).
    names = {"node_cluster", "cluster"} if PROVIDER == "node" else {"node_cluster"}
    users = [item for item in items if names & set(getattr(item, "fixturenames", ()))]
    _LAST_NODE_TEST[:] = users[-1:]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last node test (and its fixtures' teardown), stop the node."""
    result = yield
    if _LAST_NODE_TEST and item is _LAST_NODE_TEST[0] and _NODE:
        _NODE.pop().stop()
    return result


@pytest.fixture
def api(cluster: Path) -> Iterator[client.ApiClient]:
    """A cluster-admin API client for one test."""
    with config.new_client_from_config(str(cluster)) as api_client:
        yield api_client


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    core = client.CoreV1Api(api)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"loom.dev/e2e": "true"}))
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)
