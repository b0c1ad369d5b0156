"""Hot standby through Kopf peering against a real API server: one replica works, the other takes over.

The peering CRDs and the KopfPeering object come from the chart (``helm template`` of
templates/peering.yaml with standby on). Two ``loom operator --peering`` processes watch one
namespace under the chart's ServiceAccount RBAC, with a short peering lifetime so the
standby takes over within seconds of the active replica being killed.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.k8s.envtest import ControlPlane
from tests.k8s.operator.conftest import Loom, OperatorProcess, operator_env, wait_for
from tests.support import chart
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.k8s

LIFETIME = 10  # seconds a keep-alive counts: the takeover delay after a hard kill
RESUMED = "Resuming operations after the pause"


def worker(name: str) -> dict[str, Any]:
    return {"systemPrompt": f"Answer as {name}.", "tiers": ["local"], "defaultModelTier": "local"}


def worker_reconciles(op: OperatorProcess) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(op.metrics())
        for s in family.samples
        if s.name == "loom_operator_reconciles_total" and s.labels.get("kind") == "Worker"
    )


@pytest.fixture(scope="module")
def standby_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with control_plane.api_client() as api:
        yield api


@pytest.fixture(scope="module")
def peering(standby_api: client.ApiClient, loom_crds: None) -> Iterator[tuple[str, str]]:
    """(namespace, peering name): the chart's peering CRDs and its KopfPeering in a fresh namespace."""
    namespace, name = f"standby-{uuid.uuid4().hex[:8]}", f"loom-{uuid.uuid4().hex[:6]}"
    values = {"watchNamespaces": [namespace], "operator": {"standby": {"enabled": True, "peeringName": name}}}
    with tempfile.TemporaryDirectory() as tmp:
        objects = chart.render(values, Path(tmp), "--show-only", "templates/peering.yaml")
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    (peering_obj,) = [o for o in objects if o["kind"] == "KopfPeering"]
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ]

    ext = client.ApiextensionsV1Api(standby_api)
    created: list[str] = []
    for crd in crds:
        try:
            ext.create_custom_resource_definition(crd)
            created.append(crd["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 409:  # already there (e.g. from a chart install): keep it
                raise

    def established() -> bool:
        return all(
            any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []
            )
            for crd in crds
        )

    wait_for(established, 30, what="peering CRDs established")
    core = client.CoreV1Api(standby_api)
    core.create_namespace({"metadata": {"name": namespace}})
    co = client.CustomObjectsApi(standby_api)
    wait_for(
        lambda: co.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", peering_obj),
        30,
        what="KopfPeering created",
    )
    try:
        yield namespace, name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(namespace)
        for crd_name in created:
            with contextlib.suppress(ApiException):
                ext.delete_custom_resource_definition(crd_name)


@pytest.fixture(scope="module")
def operators(
    peering: tuple[str, str], sa_kubeconfig: Path, operator_nats: NatsServer
) -> Iterator[list[OperatorProcess]]:
    """Two replicas in one peering, resync every second; no RBAC denial in either log at the end."""
    namespace, name = peering
    env = {
        **operator_env(operator_nats),
        "LOOM_WATCH_NAMESPACES": namespace,
        "LOOM_PEERING": name,
        "LOOM_PEERING_LIFETIME": str(LIFETIME),
        "LOOM_RESYNC_SECONDS": "1",
    }
    logs = Path(tempfile.mkdtemp(prefix="loom-operator-standby-"))
    ops = [OperatorProcess(sa_kubeconfig, logs / f"operator-{i}.log", env) for i in range(2)]
    try:
        for op in ops:
            op.start()
        yield ops
    finally:
        for op in ops:
            op.stop()
    for op in ops:
        denials = [line for line in op.log().splitlines() if re.search(r'forbidden: User ".*" cannot', line)]
        assert not denials, "RBAC denials in operator log:\n" + "\n".join(denials[:20])


def standby_state(op: OperatorProcess) -> str | None:
    """The replica's latest view of itself: "active" or "paused" (None before its first check)."""
    states = re.findall(r"standby: (active|paused) in peering", op.log())
    return states[-1] if states else None


def test_one_replica_works_and_the_standby_takes_over(
    operators: list[OperatorProcess], peering: tuple[str, str], standby_api: client.ApiClient
) -> None:
    loom = Loom(standby_api, peering[0])
    # One replica pauses in favour of the other (the higher of two random priorities).
    wait_for(
        lambda: sorted(str(standby_state(op)) for op in operators) == ["active", "paused"],
        60,
        what="one active and one paused replica",
    )
    (standby,) = [op for op in operators if standby_state(op) == "paused"]
    (active,) = [op for op in operators if op is not standby]

    loom.create("Worker", "first", worker("first"))
    loom.wait_ready("Worker", "first")
    done = worker_reconciles(active)
    assert done >= 1
    # The active replica re-applies every second; the standby neither handles events nor resyncs.
    wait_for(lambda: worker_reconciles(active) >= done + 3, 30, what="three resyncs by the active replica")
    assert worker_reconciles(standby) == 0
    assert standby_state(standby) == "paused"
    resumed = standby.log().count(RESUMED)

    # A burst of changes, with the active replica hard-killed in the middle of it (no goodbye in the
    # peering: the standby waits out the keep-alive lifetime, then must converge on all of it).
    for i in range(6):
        loom.create("Worker", f"burst-{i}", worker(f"burst-{i}"))
    loom.patch("Worker", "first", {"systemPrompt": "Answer as first, version 2."})
    assert active.proc is not None
    active.proc.kill()
    active.proc.wait(10)
    for i in range(6, 10):
        loom.create("Worker", f"burst-{i}", worker(f"burst-{i}"))
    loom.delete("Worker", "burst-0")
    loom.patch("Worker", "burst-1", {"systemPrompt": "Answer as burst-1, version 2."})
    loom.patch("Worker", "first", {"systemPrompt": "Answer as first, version 3."})
    loom.create("Worker", "second", worker("second"))
    loom.wait_ready("Worker", "second", timeout=LIFETIME + 60)
    live = ["first", "second", *(f"burst-{i}" for i in range(1, 10))]
    for name in live:
        loom.wait_ready("Worker", name, timeout=60)  # status converged on the latest generation
    # Exactly one Deployment per live Worker tier: none lost, none left from the deleted one.
    wait_for(
        lambda: sorted(loom.deployments("loom.dev/worker")) == sorted(f"{n}-local" for n in live),
        60,
        what="one Deployment per live Worker, none for the deleted one",
    )
    for name, version in (("first", "version 3"), ("burst-1", "version 2")):
        config = loom.core.read_namespaced_config_map(f"{name}-config", loom.ns).data["worker.yaml"]
        assert version in config, name
    assert standby.log().count(RESUMED) == resumed + 1  # Kopf's handlers resumed
    assert worker_reconciles(standby) >= 1
    # Its own loops resume too: the resync re-applies what existed before the takeover.
    wait_for(lambda: standby_state(standby) == "active", 30, what="the standby's loops active")
    before = worker_reconciles(standby)
    wait_for(lambda: worker_reconciles(standby) >= before + 2, 30, what="resyncs by the new active replica")
    loom.wait_ready("Worker", "first")
