"""The operator against a real API server, running under the chart's ServiceAccount RBAC."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from tests.k8s.operator.conftest import Loom, OperatorProcess, wait_for
from tests.support.nats_server import NatsServer

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("loom_operator")]

HASH = "loom.dev/config-hash"
PROMPT = "Summarize the document in three sentences."


def worker(tiers: list[str], **extra: Any) -> dict[str, Any]:
    return {"systemPrompt": PROMPT, "tiers": tiers, "defaultModelTier": tiers[0], **extra}


def config_hashes(loom: Loom, selector: str) -> dict[str, str]:
    return {n: d.spec.template.metadata.annotations[HASH] for n, d in loom.deployments(selector).items()}


def test_worker_goes_ready_with_its_children(loom: Loom) -> None:
    loom.create("Worker", "summarizer", worker(["local", "standard"]))
    obj = loom.wait_ready("Worker", "summarizer")
    status = obj["status"]
    assert [t["name"] for t in status["tiers"]] == ["local", "standard"]
    assert all(t["readyReplicas"] == 1 for t in status["tiers"])
    assert status["tierNames"] == "local,standard" and status["replicaSummary"] == "2/2"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }
    deps = loom.deployments("loom.dev/worker=summarizer")
    assert sorted(deps) == ["summarizer-local", "summarizer-standard"]
    dep = deps["summarizer-local"]
    assert dep.metadata.owner_references[0].kind == "Worker" and dep.metadata.owner_references[0].controller
    managers = {m.manager for m in dep.metadata.managed_fields}
    assert "loom-operator" in managers
    cm = loom.core.read_namespaced_config_map("summarizer-config", loom.ns)
    assert PROMPT in cm.data["worker.yaml"]
    assert loom.core.read_namespaced_service("summarizer-metrics", loom.ns).spec.ports[0].port == 9090
    # The operator keeps its bookkeeping in status, never in metadata annotations or finalizers.
    meta = obj["metadata"]
    assert not meta.get("finalizers")
    assert not any(k.startswith("kopf.") for k in (meta.get("annotations") or {}))


def test_pipeline_router_policy_and_schedule_go_ready(loom: Loom) -> None:
    loom.create(
        "RouterPolicy",
        "default",
        {"tiers": [{"name": "local"}, {"name": "frontier", "backend": "anthropic"}]},
    )
    loom.create("Worker", "extractor", worker(["local"]))
    loom.create(
        "Pipeline",
        "docs",
        {
            "pipelineStages": [
                {"name": "extract", "workerType": "extractor", "inputMapping": {"text": "goal.context.text"}}
            ]
        },
    )
    loom.create(
        "Schedule", "hourly", {"cron": "0 * * * *", "goal": {"pipeline": "docs", "context": {"text": "x"}}}
    )
    pipe = loom.wait_ready("Pipeline", "docs")
    assert pipe["status"]["stages"] == 1
    sched = loom.wait_ready("Schedule", "hourly")
    assert sched["status"]["schedule"] == "0 * * * *"
    assert sched["status"]["nextScheduleTime"].endswith(":00:00Z")
    policy = loom.wait_ready("RouterPolicy", "default")
    assert policy["status"]["tierNames"] == "local,frontier"
    assert sorted(loom.deployments("app.kubernetes.io/managed-by=loom-operator")) == [
        "default-router",
        "docs-pipeline",
        "extractor-local",
        "hourly-scheduler",
    ]
    # The router's catalog lists the namespace's Workers and follows them.
    wait_for(
        lambda: (
            "extractor" in loom.core.read_namespaced_config_map("default-config", loom.ns).data["router.yaml"]
        ),
        30,
        what="router catalog lists extractor",
    )
    loom.create("Worker", "classifier", worker(["frontier"]))
    wait_for(
        lambda: (
            "classifier"
            in loom.core.read_namespaced_config_map("default-config", loom.ns).data["router.yaml"]
        ),
        30,
        what="router catalog lists classifier",
    )


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        ("Worker", worker(["Bad_Tier"]), "spec.tiers[0]: Invalid value"),
        (
            "Worker",
            worker(["local"], autoscaling={"minReplicas": 4, "maxReplicas": 2}),
            "minReplicas must be <= maxReplicas",
        ),
        ("Worker", {"workerKind": "processor"}, "processor workers need processingBackend"),
        ("Worker", worker(["local"], defaultModelTier="frontier"), "defaultModelTier must be one of tiers"),
        ("Schedule", {"cron": "every minute", "goal": {}}, "spec.cron"),
        (
            "Schedule",
            {"cron": "* * * * *", "intervalSeconds": 5, "goal": {}},
            "set exactly one of cron or intervalSeconds",
        ),
        ("Schedule", {"intervalSeconds": 5, "dispatchType": "task"}, "dispatchType task needs task"),
        (
            "Pipeline",
            {"pipelineStages": [{"name": "a", "workerType": "w"}, {"name": "a", "workerType": "w"}]},
            "stage names must be unique",
        ),
        (
            "RouterPolicy",
            {"tiers": [{"name": "local"}], "rateLimits": {"gold": {"requestsPerMinute": 5}}},
            "rateLimits keys must be tier names defined in tiers",
        ),
        ("RouterPolicy", {"tierOverrides": {"Not A Worker!": "local"}}, "keys must"),
        (
            "Pipeline",
            {"pipelineStages": [{"name": "a", "workerType": "w"}], "stateStore": {"backend": "redis"}},
            "backend redis needs urlSecretRef",
        ),
    ],
    ids=[
        "bad-tier",
        "min-gt-max",
        "missing-backend",
        "default-tier",
        "bad-cron",
        "cron-and-interval",
        "task-without-task",
        "duplicate-stage",
        "unknown-rate-limit-tier",
        "bad-override-key",
        "redis-state-without-secret",
    ],
)
def test_invalid_specs_are_rejected_by_the_server(
    loom: Loom, kind: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as info:
        loom.create(kind, "bad", spec)
    assert info.value.status == 422
    assert message in json.loads(info.value.body)["message"]


def test_update_rolls_out_and_removed_tier_is_pruned(loom: Loom) -> None:
    loom.create("Worker", "w", worker(["local", "standard"]))
    loom.wait_ready("Worker", "w")
    before = config_hashes(loom, "loom.dev/worker=w")
    loom.patch("Worker", "w", {"systemPrompt": "A different prompt.", "tiers": ["local"]})
    wait_for(
        lambda: sorted(loom.deployments("loom.dev/worker=w")) == ["w-local"], 30, what="w-standard pruned"
    )
    after = config_hashes(loom, "loom.dev/worker=w")
    assert after["w-local"] != before["w-local"]
    obj = loom.wait_ready("Worker", "w")
    assert [t["name"] for t in obj["status"]["tiers"]] == ["local"]
    assert (
        "A different prompt." in loom.core.read_namespaced_config_map("w-config", loom.ns).data["worker.yaml"]
    )


def test_hand_deleted_or_edited_children_are_put_back(loom: Loom) -> None:
    loom.create("Worker", "w", worker(["local"]))
    loom.wait_ready("Worker", "w")
    old_uid = loom.apps.read_namespaced_deployment("w-local", loom.ns).metadata.uid
    loom.apps.delete_namespaced_deployment("w-local", loom.ns)
    wait_for(
        lambda: loom.apps.read_namespaced_deployment("w-local", loom.ns).metadata.uid != old_uid,
        30,
        what="w-local recreated",
    )
    loom.core.patch_namespaced_config_map("w-config", loom.ns, {"data": {"worker.yaml": "tampered"}})
    wait_for(
        lambda: PROMPT in loom.core.read_namespaced_config_map("w-config", loom.ns).data["worker.yaml"],
        30,
        what="ConfigMap restored",
    )
    loom.core.delete_namespaced_service("w-metrics", loom.ns)
    wait_for(lambda: loom.core.read_namespaced_service("w-metrics", loom.ns), 30, what="Service recreated")
    loom.wait_ready("Worker", "w")


def test_delete_removes_children_by_garbage_collection(loom: Loom) -> None:
    loom.create("Worker", "w", worker(["local"]))
    loom.wait_ready("Worker", "w")
    loom.delete("Worker", "w")

    def gone() -> bool:
        return (
            not loom.deployments("loom.dev/worker=w")
            and not loom.core.list_namespaced_config_map(loom.ns, label_selector="loom.dev/worker=w").items
        )

    wait_for(gone, 60, what="children garbage-collected")


def test_unknown_tier_stalls_with_event_then_recovers(loom: Loom) -> None:
    loom.create("RouterPolicy", "default", {"tiers": [{"name": "local"}]})
    loom.wait_ready("RouterPolicy", "default")
    loom.create("Worker", "w", worker(["frontier"]))
    stalled = wait_for(
        lambda: (c := loom.condition("Worker", "w", "Stalled")) and c["status"] == "True" and c,
        30,
        what="Stalled",
    )
    assert stalled["reason"] == "UnknownTier"
    assert "tier 'frontier' is not defined by RouterPolicy 'default'" in stalled["message"]
    assert not loom.deployments("loom.dev/worker=w")  # no children for a stalled spec
    events = wait_for(
        lambda: [
            e
            for e in loom.core.list_namespaced_event(loom.ns).items
            if e.involved_object.name == "w" and e.type == "Warning"
        ],
        20,
        what="Warning event",
    )
    assert events[0].reason == "UnknownTier"
    loom.patch("RouterPolicy", "default", {"tiers": [{"name": "local"}, {"name": "frontier"}]})
    loom.wait_ready("Worker", "w")
    assert sorted(loom.deployments("loom.dev/worker=w")) == ["w-frontier"]


def test_pipeline_cycle_is_rejected_or_stalled(loom: Loom) -> None:
    spec = {
        "pipelineStages": [
            {"name": "a", "workerType": "w", "inputMapping": {"x": "b.output.y"}},
            {"name": "b", "workerType": "w", "inputMapping": {"x": "a.output.y"}},
        ]
    }
    loom.create("Pipeline", "cyclic", spec)
    stalled = wait_for(
        lambda: (c := loom.condition("Pipeline", "cyclic", "Stalled")) and c["status"] == "True" and c,
        30,
        what="Stalled",
    )
    assert "cycle" in stalled["message"]
    assert not loom.deployments("loom.dev/pipeline=cyclic")


async def _backlog(nats_server: NatsServer, subject: str, consumers: list[str], count: int) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name="LOOM_TASKS", subjects=["loom.tasks.*.*"], retention=RetentionPolicy.WORK_QUEUE)
        )
        for durable in consumers:
            tier = durable.rsplit("-", 1)[-1]
            await js.add_consumer(
                "LOOM_TASKS",
                ConsumerConfig(
                    durable_name=durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    filter_subject=f"loom.tasks.scaled.{tier}",
                ),
            )
        for i in range(count):
            await js.publish(subject, json.dumps({"n": i}).encode())
    finally:
        await nc.close()


async def _purge(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().purge_stream("LOOM_TASKS")
    finally:
        await nc.close()


def test_builtin_scaler_follows_one_tiers_backlog(
    loom: Loom, operator_nats: NatsServer, loom_operator: OperatorProcess
) -> None:
    auto = {
        "minReplicas": 0,
        "maxReplicas": 3,
        "targetLag": 5,
        "activationLag": 0,
        "cooldownSeconds": 4,
        "pollingSeconds": 1,
    }
    loom.create("Worker", "scaled", worker(["local", "frontier"], autoscaling=auto))
    loom.wait_ready("Worker", "scaled")

    def replicas() -> dict[str, int]:
        return {n: d.spec.replicas for n, d in loom.deployments("loom.dev/worker=scaled").items()}

    asyncio.run(
        _backlog(
            operator_nats, "loom.tasks.scaled.frontier", ["worker-scaled-local", "worker-scaled-frontier"], 12
        )
    )
    wait_for(lambda: replicas()["scaled-frontier"] == 3, 30, what="frontier scaled to 3")
    assert replicas()["scaled-local"] <= 1  # the other tier is not scaled up by frontier's backlog
    status = wait_for(
        lambda: (
            (s := loom.get("Worker", "scaled")["status"])
            and {t["name"]: t.get("lag") for t in s["tiers"]}.get("frontier") == 12
            and s
        ),
        20,
        what="lag in status",
    )
    frontier = next(t for t in status["tiers"] if t["name"] == "frontier")
    assert frontier["desiredReplicas"] == 3
    assert (
        'loom_operator_scaler_desired_replicas{tier="frontier",worker="scaled"} 3.0'
        in loom_operator.metrics()
    )

    asyncio.run(_purge(operator_nats))
    wait_for(lambda: replicas() == {"scaled-local": 0, "scaled-frontier": 0}, 40, what="both tiers at zero")
    # Scaled to zero is still Ready: the Deployments are at their desired size. (Ready was already
    # True at 3/3, so wait for the status to catch up with the scale-down rather than for Ready.)
    wait_for(
        lambda: loom.get("Worker", "scaled")["status"]["replicaSummary"] == "0/0", 30, what="status at 0/0"
    )
    loom.wait_ready("Worker", "scaled", timeout=30)


def test_operator_never_writes_spec(loom: Loom, api: client.ApiClient) -> None:
    loom.create("Worker", "w", worker(["local"]))
    obj = loom.wait_ready("Worker", "w")
    spec_managers = {
        m["manager"] for m in obj["metadata"]["managedFields"] if "f:spec" in (m.get("fieldsV1") or {})
    }
    assert "loom-operator" not in spec_managers and "kopf" not in spec_managers
