"""Render functions: spec + settings → Kubernetes objects, checked without a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loom.api import RouterPolicySpec, WorkerSpec, load_paths, load_text
from loom.api.pipeline import PipelineSpec
from loom.api.schedule import ScheduleSpec
from loom_operator.cli.render_cmd import render_resources
from loom_operator.render import (
    Owner,
    RenderError,
    render_pipeline,
    render_router_policy,
    render_schedule,
    render_worker,
    worker_route,
)
from loom_operator.render.common import CONFIG_HASH_ANNOTATION
from loom_operator.settings import Settings

SAMPLES = Path(__file__).resolve().parents[3] / "config" / "samples"
SETTINGS = Settings(image="example.org/loom:test", nats_url="nats://nats.loom:4222")


def worker_spec(**overrides: Any) -> WorkerSpec:
    base: dict[str, Any] = {
        "name": "summarizer",
        "systemPrompt": "Summarize.",
        "tiers": ["local", "frontier"],
        "defaultModelTier": "local",
    }
    return WorkerSpec.model_validate({**base, **overrides})


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


OWNER = Owner("Worker", "summarizer", "team-a", "0b7c7f0e-1111-2222-3333-444455556666")


def test_worker_children_names_labels_and_owner() -> None:
    objects = render_worker(OWNER, worker_spec(), SETTINGS)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "summarizer-config"),
        ("Deployment", "summarizer-local"),
        ("Deployment", "summarizer-frontier"),
        ("Service", "summarizer-metrics"),
    ]
    for o in objects:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "loom-operator"
        assert labels["loom.dev/worker"] == "summarizer"
        assert "app.kubernetes.io/instance" not in labels
        (ref,) = o["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "Worker",
            "name": "summarizer",
            "uid": OWNER.uid,
            "controller": True,
        }
    dep = by_kind(objects, "Deployment")[1]
    assert dep["metadata"]["labels"]["loom.dev/tier"] == "frontier"
    assert container(dep)["args"] == ["worker", "--config", "/etc/loom/worker.yaml", "--tier", "frontier"]


def test_offline_render_has_no_owner_references() -> None:
    objects = render_worker(Owner("Worker", "summarizer", "team-a"), worker_spec(), SETTINGS)
    assert all("ownerReferences" not in o["metadata"] for o in objects)


def test_autoscaled_deployments_never_set_replicas() -> None:
    scaled = render_worker(OWNER, worker_spec(), SETTINGS)
    assert all("replicas" not in d["spec"] for d in by_kind(scaled, "Deployment"))
    fixed = render_worker(OWNER, worker_spec(autoscaling={"enabled": False}, replicas=3), SETTINGS)
    assert [d["spec"]["replicas"] for d in by_kind(fixed, "Deployment")] == [3, 3]


def test_config_hash_follows_the_config() -> None:
    def hashes(spec: WorkerSpec) -> set[str]:
        deps = by_kind(render_worker(OWNER, spec, SETTINGS), "Deployment")
        return {d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] for d in deps}

    one, same, other = (
        hashes(worker_spec()),
        hashes(worker_spec()),
        hashes(worker_spec(systemPrompt="Shorter.")),
    )
    assert len(one) == 1 and one == same
    assert one != other


def test_pod_hardening_probes_and_mounts() -> None:
    dep = by_kind(render_worker(OWNER, worker_spec(), SETTINGS), "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/loom/worker.yaml"]["subPath"] == "worker.yaml"
    assert "/tmp" in mounts
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    assert c["image"] == "example.org/loom:test"
    assert env_of(dep)["LOOM_NATS_URL"] == "nats://nats.loom:4222"


def test_nats_credentials_and_tls_from_secrets() -> None:
    settings = Settings(nats_creds_secret="nats-creds", nats_tls_secret="nats-tls")
    dep = by_kind(render_worker(OWNER, worker_spec(), settings), "Deployment")[0]
    env = env_of(dep)
    assert env["LOOM_NATS_CREDS"] == "/etc/loom/nats/creds"
    assert env["LOOM_NATS_TLS_CA"] == "/etc/loom/nats/tls/ca.crt"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["nats-creds"]["secret"]["secretName"] == "nats-creds"
    assert volumes["nats-tls"]["secret"]["secretName"] == "nats-tls"


def test_tier_config_and_api_key_by_secret_reference() -> None:
    policy = RouterPolicySpec.model_validate(
        {
            "tiers": [
                {"name": "local", "backend": "ollama", "model": "llama3"},
                {
                    "name": "frontier",
                    "backend": "anthropic",
                    "model": "claude-sonnet",
                    "apiKeySecretRef": {"name": "anthropic", "key": "api-key"},
                },
            ]
        }
    )
    objects = render_worker(OWNER, worker_spec(), SETTINGS, policy=policy, policy_name="default")
    local, frontier = by_kind(objects, "Deployment")
    assert json.loads(env_of(local)["LOOM_TIER_CONFIG"])["backend"] == "ollama"
    tier = json.loads(env_of(frontier)["LOOM_TIER_CONFIG"])
    assert tier["model"] == "claude-sonnet" and tier["apiKeyEnv"] == "ANTHROPIC_API_KEY"
    assert env_of(frontier)["ANTHROPIC_API_KEY"] == {"secretKeyRef": {"name": "anthropic", "key": "api-key"}}
    assert "ANTHROPIC_API_KEY" not in env_of(local)


def test_tier_the_policy_does_not_define_is_a_render_error() -> None:
    policy = RouterPolicySpec.model_validate({"tiers": [{"name": "local"}]})
    with pytest.raises(RenderError, match="tier 'frontier' is not defined by RouterPolicy 'default'"):
        render_worker(OWNER, worker_spec(), SETTINGS, policy=policy, policy_name="default")


def test_model_endpoint_allow_list_reaches_the_pods_and_loopback_is_a_render_error() -> None:
    endpoints = {"allowedUrls": ["http://vllm.models.svc:8000"], "allowedNetworks": ["10.96.0.0/12"]}
    policy = RouterPolicySpec.model_validate(
        {
            "tiers": [
                {
                    "name": "local",
                    "backend": "openai",
                    "model": "q",
                    "baseUrl": "http://vllm.models.svc:8000/v1",
                },
                {"name": "frontier", "backend": "openai", "model": "q", "baseUrl": "http://127.0.0.1:9/v1"},
            ],
            "modelEndpoints": {**endpoints, "allowedUrls": [*endpoints["allowedUrls"], "http://127.0.0.1:9"]},
        }
    )
    with pytest.raises(RenderError, match=r"tiers\.frontier\.baseUrl: 127\.0\.0\.1 is loopback"):
        render_worker(OWNER, worker_spec(), SETTINGS, policy=policy, policy_name="default")
    one_tier = worker_spec(tiers=["local"])
    objects = render_worker(OWNER, one_tier, SETTINGS, policy=policy, policy_name="default")
    allowed = json.loads(env_of(by_kind(objects, "Deployment")[0])["LOOM_MODEL_ENDPOINTS"])
    assert allowed["allowedNetworks"] == ["10.96.0.0/12"]
    assert "http://vllm.models.svc:8000" in allowed["allowedUrls"]


def test_without_policy_tiers_default_to_local_backend() -> None:
    dep = by_kind(render_worker(OWNER, worker_spec(), SETTINGS), "Deployment")[0]
    assert json.loads(env_of(dep)["LOOM_TIER_CONFIG"])["backend"] == "local"


def test_keda_scaled_object_per_tier() -> None:
    settings = Settings(nats_monitor_url="http://nats.loom:8222")
    spec = worker_spec(
        autoscaling={
            "minReplicas": 0,
            "maxReplicas": 7,
            "targetLag": 20,
            "activationLag": 2,
            "cooldownSeconds": 90,
            "pollingSeconds": 5,
        }
    )
    objects = render_worker(OWNER, spec, settings, keda=True)
    sos = by_kind(objects, "ScaledObject")
    assert [s["metadata"]["name"] for s in sos] == ["summarizer-local", "summarizer-frontier"]
    so = sos[1]["spec"]
    assert so["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "summarizer-frontier",
    }
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["cooldownPeriod"], so["pollingInterval"]) == (
        0,
        7,
        90,
        5,
    )
    (trigger,) = so["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"] == {
        "natsServerMonitoringEndpoint": "nats.loom:8222",
        "account": "$G",
        "stream": "LOOM_TASKS",
        "consumer": "worker-summarizer-frontier",
        "lagThreshold": "20",
        "activationLagThreshold": "2",
        "useHttps": "false",
    }
    # No ScaledObject when autoscaling is off, or without KEDA.
    assert not by_kind(
        render_worker(OWNER, worker_spec(autoscaling={"enabled": False}), settings, keda=True), "ScaledObject"
    )
    assert not by_kind(render_worker(OWNER, spec, settings, keda=False), "ScaledObject")


def test_pipeline_router_and_schedule_children() -> None:
    pipe = PipelineSpec.model_validate(
        {"name": "p", "replicas": 2, "pipelineStages": [{"name": "a", "workerType": "summarizer"}]}
    )
    objs = render_pipeline(Owner("Pipeline", "p", "ns"), pipe, SETTINGS)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "p-config"),
        ("Deployment", "p-pipeline"),
    ]
    assert objs[1]["spec"]["replicas"] == 2
    assert objs[1]["metadata"]["labels"]["app.kubernetes.io/component"] == "pipeline"

    policy = RouterPolicySpec.model_validate({})
    routes = {"summarizer": worker_route(worker_spec())}
    objs = render_router_policy(Owner("RouterPolicy", "default", "ns"), policy, SETTINGS, workers=routes)
    router_yaml = objs[0]["data"]["router.yaml"]
    cfg = yaml.safe_load(router_yaml)
    assert cfg["workers"] == {
        "summarizer": {
            "defaultModelTier": "local",
            "tiers": ["local", "frontier"],
            "maxOutputTokens": 2000,
            "timeoutSeconds": 60.0,
            "maxDeliver": 3,
        }
    }
    assert container(objs[1])["args"] == ["router", "--config", "/etc/loom/router.yaml"]

    sched = ScheduleSpec.model_validate(
        {"name": "s", "cron": "0 * * * *", "goal": {"pipeline": "p"}, "suspend": True}
    )
    objs = render_schedule(Owner("Schedule", "s", "ns"), sched, SETTINGS)
    assert objs[1]["metadata"]["name"] == "s-scheduler"
    assert objs[1]["spec"]["replicas"] == 0


def test_a_pipeline_in_redis_gets_its_url_from_the_secret_never_the_value() -> None:
    pipe = PipelineSpec.model_validate(
        {
            "name": "p",
            "pipelineStages": [{"name": "a", "workerType": "summarizer"}],
            "stateStore": {"backend": "redis", "urlSecretRef": {"name": "redis", "key": "url"}},
        }
    )
    deploy = render_pipeline(Owner("Pipeline", "p", "ns"), pipe, SETTINGS)[1]
    env = {e["name"]: e for e in container(deploy)["env"]}
    assert env["LOOM_PIPELINE_STATE_STORE"] == {
        "name": "LOOM_PIPELINE_STATE_STORE",
        "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}},
    }
    kubernetes_validate.validate(deploy, "1.33", strict=True)
    plain = PipelineSpec.model_validate({"name": "p", "pipelineStages": [{"name": "a", "workerType": "s"}]})
    names = [
        e["name"] for e in container(render_pipeline(Owner("Pipeline", "p", "ns"), plain, SETTINGS)[1])["env"]
    ]
    assert "LOOM_PIPELINE_STATE_STORE" not in names


@pytest.mark.parametrize("keda", [False, True])
def test_samples_render_and_pass_strict_kubernetes_validation(keda: bool) -> None:
    rendered = render_resources(load_paths([SAMPLES]), SETTINGS, keda=keda, namespace="default")
    assert rendered, "config/samples rendered nothing"
    kinds = set()
    for objects in rendered.values():
        for obj in objects:
            kinds.add(obj["kind"])
            if obj["kind"] == "ScaledObject":
                continue  # not a built-in kind; its shape is asserted above
            kubernetes_validate.validate(obj, "1.33", strict=True)
    assert {"ConfigMap", "Deployment", "Service"} <= kinds


def test_owned_objects_pass_strict_validation_too() -> None:
    (res,) = load_text(
        "apiVersion: loom.dev/v1alpha1\nkind: Worker\nmetadata: {name: w}\n"
        "spec: {systemPrompt: hi, env: {A: b}, autoscaling: {enabled: false}}\n"
    )
    for obj in render_worker(Owner("Worker", "w", "ns", "uid-1"), res.spec, Settings(nats_creds_secret="c")):
        kubernetes_validate.validate(obj, "1.33", strict=True)
