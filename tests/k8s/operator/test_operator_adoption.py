"""The operator never takes over an object it did not create (real API server, chart RBAC)."""

from __future__ import annotations

import pytest

from tests.k8s.operator.conftest import Loom, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("loom_operator")]


def test_unmanaged_config_map_and_service_are_left_alone_until_removed(loom: Loom) -> None:
    loom.core.create_namespaced_config_map(
        loom.ns, {"metadata": {"name": "w-config", "labels": {"app": "billing"}}, "data": {"k": "theirs"}}
    )
    loom.core.create_namespaced_service(
        loom.ns,
        {
            "metadata": {"name": "w-metrics"},
            "spec": {"selector": {"app": "billing"}, "ports": [{"port": 80}]},
        },
    )
    loom.create("Worker", "w", {"systemPrompt": "Say hi.", "tiers": ["local"], "defaultModelTier": "local"})
    stalled = wait_for(
        lambda: (c := loom.condition("Worker", "w", "Stalled")) and c["status"] == "True" and c,
        30,
        what="Stalled",
    )
    assert stalled["reason"] == "AdoptionRefused"
    assert (
        "ConfigMap 'w-config' already exists and was not created by the Loom operator" in stalled["message"]
    )
    assert "Service 'w-metrics' already exists" in stalled["message"]
    events = wait_for(
        lambda: [
            e
            for e in loom.core.list_namespaced_event(loom.ns).items
            if e.involved_object.name == "w" and e.type == "Warning" and e.reason == "AdoptionRefused"
        ],
        20,
        what="Warning event",
    )
    assert "w-config" in events[0].message
    cm = loom.core.read_namespaced_config_map("w-config", loom.ns)
    assert cm.data == {"k": "theirs"} and not cm.metadata.owner_references
    assert cm.metadata.labels == {"app": "billing"}
    svc = loom.core.read_namespaced_service("w-metrics", loom.ns)
    assert svc.spec.selector == {"app": "billing"} and not svc.metadata.owner_references
    assert not loom.deployments("loom.dev/worker=w")  # nothing applied for a refused resource

    loom.core.delete_namespaced_config_map("w-config", loom.ns)
    loom.core.delete_namespaced_service("w-metrics", loom.ns)
    loom.wait_ready("Worker", "w", timeout=120)  # the next resync (30 s here) applies the children
    cm = loom.core.read_namespaced_config_map("w-config", loom.ns)
    assert cm.metadata.owner_references[0].kind == "Worker" and "worker.yaml" in cm.data
    assert sorted(loom.deployments("loom.dev/worker=w")) == ["w-local"]
