"""KEDA mode against a real API server: ScaledObjects per Worker tier, replicas left to KEDA.

KEDA itself does not run here: a minimal ScaledObject CRD (tests/k8s/operator/data) is what
``LOOM_KEDA=auto`` detects. The operator runs under the chart's ServiceAccount RBAC, watching
only this module's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nats
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from prometheus_client.parser import text_string_to_metric_families

from loom import subjects
from tests.k8s.envtest import ControlPlane
from tests.k8s.operator.conftest import Loom, OperatorProcess, chart_cluster_role, operator_env, wait_for
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.k8s

CRD_FILE = Path(__file__).parent / "data" / "keda-scaledobject-crd.yaml"
KEDA = ("keda.sh", "v1alpha1", "scaledobjects")
AUTOSCALING = {
    "minReplicas": 0,
    "maxReplicas": 4,
    "targetLag": 5,
    "activationLag": 1,
    "cooldownSeconds": 7,
    "pollingSeconds": 3,
}


def worker(tiers: list[str], **extra: Any) -> dict[str, Any]:
    return {"systemPrompt": "Classify.", "tiers": tiers, "defaultModelTier": tiers[0], **extra}


@pytest.fixture(scope="module")
def keda_crd(control_plane: ControlPlane, loom_crds: None) -> Iterator[None]:
    """The stand-in ScaledObject CRD, Established; deleted after the module when this fixture made it."""
    body = yaml.safe_load(CRD_FILE.read_text())
    with control_plane.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        created = False
        try:
            ext.create_custom_resource_definition(body)
            created = True
        except ApiException as exc:
            if exc.status != 409:  # already there (e.g. a real KEDA): keep it
                raise

        def established() -> bool:
            crd = ext.read_custom_resource_definition(body["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        wait_for(established, 30, what="ScaledObject CRD established")
        try:
            yield
        finally:
            if created:
                ext.delete_custom_resource_definition(body["metadata"]["name"])


@pytest.fixture(scope="module")
def keda_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with control_plane.api_client() as api:
        yield api


@pytest.fixture(scope="module")
def keda_namespace(keda_api: client.ApiClient) -> Iterator[str]:
    name = f"keda-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(keda_api).create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiException):
        client.CoreV1Api(keda_api).delete_namespace(name)


@pytest.fixture(scope="module")
def keda_operator(
    sa_kubeconfig: Path, operator_nats: NatsServer, keda_crd: None, keda_namespace: str
) -> Iterator[OperatorProcess]:
    """``LOOM_KEDA=auto`` with the CRD present, a short resync; no RBAC denial in its log at the end."""
    env = {
        **operator_env(operator_nats),
        "LOOM_KEDA": "auto",
        "LOOM_WATCH_NAMESPACES": keda_namespace,
        "LOOM_RESYNC_SECONDS": "2",
    }
    log = Path(tempfile.mkdtemp(prefix="loom-operator-keda-")) / "operator.log"
    op = OperatorProcess(sa_kubeconfig, log, env).start()
    try:
        wait_for(lambda: "KEDA on" in op.log(), 30, what="operator started in KEDA mode")
        yield op
    finally:
        op.stop()
    denials = [line for line in op.log().splitlines() if re.search(r'forbidden: User ".*" cannot', line)]
    assert not denials, "RBAC denials in operator log:\n" + "\n".join(denials[:20])


@pytest.fixture
def loom(keda_api: client.ApiClient, keda_namespace: str, keda_operator: OperatorProcess) -> Iterator[Loom]:
    """Helpers in the operator's namespace; the test's Workers are deleted afterwards."""
    helper = Loom(keda_api, keda_namespace)
    yield helper
    for obj in helper.co.list_namespaced_custom_object("loom.dev", "v1alpha1", keda_namespace, "workers")[
        "items"
    ]:
        with contextlib.suppress(ApiException):
            helper.delete("Worker", obj["metadata"]["name"])


def scaled_objects(loom: Loom, worker_name: str) -> dict[str, dict[str, Any]]:
    items = loom.co.list_namespaced_custom_object(
        *KEDA[:2], loom.ns, KEDA[2], label_selector=f"loom.dev/worker={worker_name}"
    )["items"]
    return {o["metadata"]["name"]: o for o in items}


def operator_fields(dep: Any, manager: str = "loom-operator") -> dict[str, Any]:
    """The spec fields ``manager`` owns on a Deployment (server-side apply bookkeeping)."""
    for entry in dep.metadata.managed_fields or []:
        if entry.manager == manager:
            spec: dict[str, Any] = (entry.fields_v1 or {}).get("f:spec", {})
            return spec
    return {}


def managers(dep: Any) -> set[str]:
    return {m.manager for m in dep.metadata.managed_fields or []}


def worker_reconciles(op: OperatorProcess) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(op.metrics())
        for s in family.samples
        if s.name == "loom_operator_reconciles_total" and s.labels.get("kind") == "Worker"
    )


async def backlog(server: NatsServer, worker_type: str, tier: str, count: int) -> None:
    """``count`` tasks waiting on the tier's consumer (the lag KEDA and the built-in scaler read)."""
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=subjects.STREAM_TASKS, subjects=["loom.tasks.*.*"], retention=RetentionPolicy.WORK_QUEUE
            )
        )
        await js.add_consumer(
            subjects.STREAM_TASKS,
            ConsumerConfig(
                durable_name=subjects.worker_consumer(worker_type, tier),
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=subjects.task_subject(worker_type, tier),
            ),
        )
        for i in range(count):
            await js.publish(subjects.task_subject(worker_type, tier), str(i).encode())
    finally:
        await nc.close()


async def drop_consumer(server: NatsServer, worker_type: str, tier: str) -> None:
    nc = await nats.connect(server.url)
    try:
        await nc.jetstream().delete_consumer(
            subjects.STREAM_TASKS, subjects.worker_consumer(worker_type, tier)
        )
    finally:
        await nc.close()


def test_chart_rbac_grants_keda_mode() -> None:
    role = chart_cluster_role()
    assert role is not None, "helm template of the chart failed"
    rules = yaml.safe_load(role)["rules"]
    keda = [r for r in rules if "keda.sh" in r["apiGroups"] and "scaledobjects" in r["resources"]]
    assert keda and {"get", "list", "watch", "create", "patch", "delete"} <= set(keda[0]["verbs"])
    crds = [r for r in rules if "apiextensions.k8s.io" in r["apiGroups"]]
    assert crds and {"get", "list", "watch"} <= set(crds[0]["verbs"])


def test_one_scaled_object_per_tier(loom: Loom, operator_nats: NatsServer) -> None:
    loom.create("Worker", "classify", worker(["local", "standard"], autoscaling=AUTOSCALING))
    obj = loom.wait_ready("Worker", "classify")
    uid = obj["metadata"]["uid"]
    objects = wait_for(
        lambda: len(s := scaled_objects(loom, "classify")) == 2 and s, 30, what="ScaledObjects"
    )
    assert sorted(objects) == ["classify-local", "classify-standard"]
    monitor = urlparse(operator_nats.monitor_url).netloc
    for tier in ("local", "standard"):
        so = objects[f"classify-{tier}"]
        spec = so["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"classify-{tier}",
        }
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 4)
        assert (spec["cooldownPeriod"], spec["pollingInterval"]) == (7, 3)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "nats-jetstream"
        assert trigger["metadata"]["stream"] == subjects.STREAM_TASKS == "LOOM_TASKS"
        assert trigger["metadata"]["consumer"] == subjects.worker_consumer("classify", tier)
        assert trigger["metadata"]["natsServerMonitoringEndpoint"] == monitor
        assert (trigger["metadata"]["lagThreshold"], trigger["metadata"]["activationLagThreshold"]) == (
            "5",
            "1",
        )
        (ref,) = so["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Worker", "classify", uid, True)

    # The tier Deployments leave replicas to KEDA: the operator's field manager does not own it.
    for name, dep in loom.deployments("loom.dev/worker=classify").items():
        owned = operator_fields(dep)
        assert "f:template" in owned, name  # the operator does own the rest of the spec
        assert "f:replicas" not in owned, name
        assert dep.spec.replicas == 1  # the API server's default until KEDA scales it

    # A ScaledObject deleted by hand is put back.
    old_uid = objects["classify-local"]["metadata"]["uid"]
    loom.co.delete_namespaced_custom_object(*KEDA[:2], loom.ns, KEDA[2], "classify-local")
    wait_for(
        lambda: (
            (so := scaled_objects(loom, "classify").get("classify-local"))
            and so["metadata"]["uid"] != old_uid
        ),
        30,
        what="classify-local ScaledObject recreated",
    )


def test_removed_tier_loses_its_scaled_object(loom: Loom) -> None:
    loom.create("Worker", "shrink", worker(["local", "standard"], autoscaling=AUTOSCALING))
    loom.wait_ready("Worker", "shrink")
    wait_for(lambda: len(scaled_objects(loom, "shrink")) == 2, 30, what="two ScaledObjects")
    loom.patch("Worker", "shrink", {"tiers": ["local"]})
    wait_for(
        lambda: sorted(scaled_objects(loom, "shrink")) == ["shrink-local"], 30, what="shrink-standard gone"
    )
    wait_for(
        lambda: sorted(loom.deployments("loom.dev/worker=shrink")) == ["shrink-local"], 30, what="pruned"
    )
    loom.wait_ready("Worker", "shrink")


def test_disabling_autoscaling_removes_scaled_objects_and_sets_replicas(loom: Loom) -> None:
    loom.create("Worker", "fixed", worker(["local", "standard"], autoscaling=AUTOSCALING))
    loom.wait_ready("Worker", "fixed")
    wait_for(lambda: len(scaled_objects(loom, "fixed")) == 2, 30, what="two ScaledObjects")
    loom.patch("Worker", "fixed", {"autoscaling": {"enabled": False}, "replicas": 2})
    wait_for(lambda: not scaled_objects(loom, "fixed"), 30, what="ScaledObjects deleted")
    wait_for(
        lambda: (
            {n: d.spec.replicas for n, d in loom.deployments("loom.dev/worker=fixed").items()}
            == {"fixed-local": 2, "fixed-standard": 2}
        ),
        30,
        what="replicas from spec",
    )
    for name, dep in loom.deployments("loom.dev/worker=fixed").items():
        assert "f:replicas" in operator_fields(dep), name
    obj = loom.wait_ready("Worker", "fixed")
    assert obj["status"]["replicaSummary"] == "4/4"


def test_builtin_scaler_leaves_replicas_to_keda(
    loom: Loom, keda_operator: OperatorProcess, operator_nats: NatsServer, request: pytest.FixtureRequest
) -> None:
    loom.create("Worker", "backlog", worker(["local"], autoscaling={**AUTOSCALING, "pollingSeconds": 1}))
    loom.wait_ready("Worker", "backlog")
    wait_for(lambda: scaled_objects(loom, "backlog"), 30, what="ScaledObject")
    # A backlog the built-in scaler would answer with 3 replicas (12 tasks / targetLag 5).
    asyncio.run(backlog(operator_nats, "backlog", "local", 12))
    request.addfinalizer(lambda: asyncio.run(drop_consumer(operator_nats, "backlog", "local")))
    # KEDA's HPA scales through the scale subresource; here the admin plays that part.
    loom.apps.patch_namespaced_deployment_scale("backlog-local", loom.ns, {"spec": {"replicas": 2}})
    before = worker_reconciles(keda_operator)
    # Several resyncs (every 2 s) and scaler intervals pass: the operator re-applies the Worker...
    wait_for(lambda: worker_reconciles(keda_operator) >= before + 3, 30, what="three more Worker reconciles")
    dep = loom.apps.read_namespaced_deployment("backlog-local", loom.ns)
    # ...but neither the re-apply nor a scaler touches replicas.
    assert dep.spec.replicas == 2
    assert "loom-autoscaler" not in managers(dep)
    assert "f:replicas" not in operator_fields(dep)
    assert "loom_operator_scaler_desired_replicas{" not in keda_operator.metrics()
    assert "scaler:" not in keda_operator.log()
