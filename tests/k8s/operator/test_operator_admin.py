"""The same operator under the admin kubeconfig (what a developer runs against a cluster)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.operator.conftest import Loom, OperatorProcess, operator_env
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def admin_operator(
    admin_kubeconfig: Path, loom_crds: None, operator_nats: NatsServer
) -> Iterator[OperatorProcess]:
    log = Path(tempfile.mkdtemp(prefix="loom-operator-admin-")) / "operator.log"
    op = OperatorProcess(admin_kubeconfig, log, operator_env(operator_nats)).start()
    try:
        yield op
    finally:
        op.stop()


def test_worker_ready_and_metrics_under_admin_kubeconfig(admin_operator: OperatorProcess, loom: Loom) -> None:
    loom.create(
        "Worker",
        "w",
        {
            "systemPrompt": "x",
            "tiers": ["local"],
            "defaultModelTier": "local",
            "autoscaling": {"enabled": False},
            "replicas": 2,
        },
    )
    obj = loom.wait_ready("Worker", "w")
    assert obj["status"]["replicaSummary"] == "2/2"
    assert loom.apps.read_namespaced_deployment("w-local", loom.ns).spec.replicas == 2
    text = admin_operator.metrics()
    assert 'loom_operator_reconciles_total{kind="Worker",outcome=' in text
    assert "loom_operator_reconcile_duration_seconds_bucket" in text
