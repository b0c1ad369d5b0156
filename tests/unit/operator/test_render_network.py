"""The per-tier worker NetworkPolicy (pure render) and the operator's network settings."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from loom.api import RouterPolicySpec, WorkerSpec, load_paths
from loom.api.pipeline import PipelineSpec
from loom.llm.endpoints import NON_PUBLIC_NETWORKS
from loom_operator.cli.render_cmd import render_resources
from loom_operator.network_settings import NetworkPolicySettings
from loom_operator.render import Owner, render_pipeline, render_worker
from loom_operator.render.common import BUS_CLIENT_LABEL
from loom_operator.render.network import model_ports, nats_ports
from loom_operator.settings import Settings

SAMPLES = Path(__file__).resolve().parents[3] / "config" / "samples"

NATS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "loom-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/component": "nats"}},
}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
NETWORK = NetworkPolicySettings(
    nats_to=(NATS_PEER,), metrics_from=(MONITORING,), allowed_cidrs=("10.8.0.0/16",)
)
SETTINGS = Settings(nats_url="nats://loom-nats.loom-system.svc:4222", network_policy=NETWORK)
OWNER = Owner("Worker", "summarizer", "team-a", "uid-1")
POLICY = RouterPolicySpec.model_validate(
    {
        "tiers": [
            {"name": "local"},
            {"name": "standard", "backend": "anthropic", "model": "claude"},
            {"name": "vllm", "backend": "openai", "model": "m", "baseUrl": "http://vllm.models.svc:8000/v1"},
        ],
        "modelEndpoints": {
            "allowedUrls": ["http://vllm.models.svc:8000"],
            "allowedNetworks": ["10.96.0.0/12"],
        },
    }
)


def worker(tiers: list[str]) -> WorkerSpec:
    return WorkerSpec.model_validate(
        {"name": "summarizer", "systemPrompt": "hi", "tiers": tiers, "defaultModelTier": tiers[0]}
    )


def policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}


def rule_to(policy: dict[str, Any], port: int) -> dict[str, Any]:
    (rule,) = [r for r in policy["spec"]["egress"] if {"port": port, "protocol": "TCP"} in r["ports"]]
    return rule


def test_one_policy_per_tier_selecting_only_that_tiers_pods() -> None:
    objects = render_worker(OWNER, worker(["standard", "vllm"]), SETTINGS, policy=POLICY)
    nps = policies(objects)
    assert sorted(nps) == ["summarizer-standard", "summarizer-vllm"]
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for name, np in nps.items():
        assert (
            np["spec"]["podSelector"]["matchLabels"] == deployments[name]["spec"]["selector"]["matchLabels"]
        )
        assert np["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert np["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loom-operator"
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
        kubernetes_validate.validate(np, "1.33", strict=True)


def test_egress_is_dns_nats_and_public_model_ports_minus_non_public_ranges() -> None:
    np = policies(render_worker(OWNER, worker(["standard"]), SETTINGS, policy=POLICY))["summarizer-standard"]
    dns, nats, model = np["spec"]["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert nats == {"ports": [{"port": 4222, "protocol": "TCP"}], "to": [NATS_PEER]}
    assert model["ports"] == [{"port": 443, "protocol": "TCP"}]
    v4, v6, *listed = model["to"]
    assert v4["ipBlock"]["cidr"] == "0.0.0.0/0" and v6["ipBlock"]["cidr"] == "::/0"
    excepted = set(v4["ipBlock"]["except"]) | set(v6["ipBlock"]["except"])
    assert excepted == set(NON_PUBLIC_NETWORKS)
    for private in (
        "169.254.169.254",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.100.100.200",
        "fd00:ec2::254",
    ):
        assert any(ipaddress.ip_address(private) in ipaddress.ip_network(n) for n in excepted), private
    # The RouterPolicy's allowed networks, then the chart's CIDRs, open private ranges on the model ports.
    assert listed == [{"ipBlock": {"cidr": "10.96.0.0/12"}}, {"ipBlock": {"cidr": "10.8.0.0/16"}}]


def test_a_tier_on_another_port_gets_that_port_too_and_local_tiers_only_443() -> None:
    nps = policies(render_worker(OWNER, worker(["vllm", "local"]), SETTINGS, policy=POLICY))
    assert rule_to(nps["summarizer-vllm"], 8000) == rule_to(nps["summarizer-vllm"], 443)
    assert [p["port"] for p in rule_to(nps["summarizer-local"], 443)["ports"]] == [443]
    assert model_ports(POLICY.tier("local")) == [443]  # the embedded server is in the pod
    assert model_ports(POLICY.tier("vllm")) == [443, 8000]


def test_metrics_ingress_only_from_the_namespace_and_the_monitoring_peers() -> None:
    np = policies(render_worker(OWNER, worker(["local"]), SETTINGS))["summarizer-local"]
    assert np["spec"]["ingress"] == [
        {"ports": [{"port": 9090, "protocol": "TCP"}], "from": [{"podSelector": {}}, MONITORING]}
    ]


def test_without_nats_peers_nats_is_allowed_on_its_ports_anywhere_and_extra_rules_are_appended() -> None:
    extra = {"ports": [{"port": 11434, "protocol": "TCP"}], "to": [MONITORING]}
    settings = Settings(
        nats_url="tls://a.example:4443,nats://b.example",
        network_policy=NetworkPolicySettings(extra_egress=(extra,)),
    )
    np = policies(render_worker(OWNER, worker(["local"]), settings))["summarizer-local"]
    assert np["spec"]["egress"][1] == {
        "ports": [{"port": 4222, "protocol": "TCP"}, {"port": 4443, "protocol": "TCP"}]
    }
    assert np["spec"]["egress"][-1] == extra
    kubernetes_validate.validate(np, "1.33", strict=True)
    assert nats_ports("nats://n:4222") == [4222]


def test_no_network_settings_no_policy_and_every_pod_carries_the_bus_client_label() -> None:
    objects = render_worker(OWNER, worker(["local"]), Settings())
    assert not policies(objects)
    pipe = PipelineSpec.model_validate({"name": "p", "pipelineStages": [{"name": "a", "workerType": "w"}]})
    objects += render_pipeline(Owner("Pipeline", "p", "ns"), pipe, Settings())
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert deployments
    for d in deployments:
        assert d["spec"]["template"]["metadata"]["labels"][BUS_CLIENT_LABEL] == "true"
        assert BUS_CLIENT_LABEL not in d["spec"]["selector"]["matchLabels"]


def test_settings_from_env_and_clear_errors() -> None:
    doc = {"natsTo": [NATS_PEER], "metricsFrom": [MONITORING], "allowedCIDRs": ["10.8.0.0/16"]}
    settings = Settings.from_env({"LOOM_NETWORK_POLICY": json.dumps(doc)})
    assert settings.network_policy == NETWORK
    assert Settings.from_env({}).network_policy is None
    with pytest.raises(ValueError, match="not JSON"):
        NetworkPolicySettings.from_json("{")
    with pytest.raises(ValueError, match="keys among"):
        NetworkPolicySettings.from_json('{"natsFrom": []}')
    with pytest.raises(ValueError, match=re.escape("'10.0.0.1/8' is not a network")):
        NetworkPolicySettings.from_json('{"allowedCIDRs": ["10.0.0.1/8"]}')
    with pytest.raises(ValueError, match="natsTo must be a list of objects"):
        NetworkPolicySettings.from_json('{"natsTo": "x"}')


def test_every_sample_deployment_carries_the_bus_client_label_and_every_policy_validates() -> None:
    rendered = render_resources(load_paths([SAMPLES]), SETTINGS, keda=False, namespace="default")
    kinds: dict[str, int] = {}
    for objects in rendered.values():
        for obj in objects:
            kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
            if obj["kind"] == "Deployment":
                assert obj["spec"]["template"]["metadata"]["labels"][BUS_CLIENT_LABEL] == "true"
            if obj["kind"] == "NetworkPolicy":
                kubernetes_validate.validate(obj, "1.33", strict=True)
    workers = [
        o
        for objs in rendered.values()
        for o in objs
        if o["kind"] == "Deployment" and "loom.dev/worker" in o["metadata"]["labels"]
    ]
    assert kinds["NetworkPolicy"] == len(workers) > 0  # one per Worker tier, none for the other kinds
