"""Per-tier worker NetworkPolicies on the real API server: accepted as rendered, pruned with their tier."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.k8s.operator.conftest import Loom, OperatorProcess, operator_env, running_operator, wait_for
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.k8s

MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
NATS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "loom-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/component": "nats"}},
}


@pytest.fixture(scope="module")
def network_operator(sa_kubeconfig: Path, operator_nats: NatsServer) -> Iterator[OperatorProcess]:
    """The operator told to render worker NetworkPolicies (as the chart does by default)."""
    env = operator_env(operator_nats)
    env["LOOM_NETWORK_POLICY"] = json.dumps(
        {"natsTo": [NATS_PEER], "metricsFrom": [MONITORING], "allowedCIDRs": ["10.8.0.0/16"]}
    )
    with running_operator(sa_kubeconfig, env, "network") as op:
        yield op


def test_worker_tiers_get_network_policies_the_server_accepts(
    network_operator: OperatorProcess, loom: Loom, api: client.ApiClient
) -> None:
    net = client.NetworkingV1Api(api)
    loom.create(
        "RouterPolicy",
        "default",
        {
            "tiers": [
                {"name": "local"},
                {
                    "name": "vllm",
                    "backend": "openai",
                    "model": "m",
                    "baseUrl": "http://vllm.models.svc:8000/v1",
                },
            ],
            "modelEndpoints": {
                "allowedUrls": ["http://vllm.models.svc:8000"],
                "allowedNetworks": ["10.96.0.0/12"],
            },
        },
    )
    loom.create(
        "Worker", "w", {"systemPrompt": "Hi.", "tiers": ["local", "vllm"], "defaultModelTier": "local"}
    )
    loom.wait_ready("Worker", "w")

    def policies() -> dict[str, client.V1NetworkPolicy]:
        return {p.metadata.name: p for p in net.list_namespaced_network_policy(loom.ns).items}

    def model_rules(np: client.V1NetworkPolicy) -> list[client.V1NetworkPolicyEgressRule]:
        return [r for r in np.spec.egress if r.ports and {p.port for p in r.ports} == {443, 8000}]

    # A Worker reconciled before the operator saw its RouterPolicy is rendered again once it does
    # (until then its vllm tier is a local default, on port 443 only): wait for that rendering.
    def rendered() -> dict[str, client.V1NetworkPolicy] | None:
        found = policies()
        ok = len(found) == 2 and "w-vllm" in found and model_rules(found["w-vllm"])
        return found if ok else None

    nps = wait_for(rendered, 30, what="two NetworkPolicies, w-vllm rendered with the RouterPolicy's tier")
    vllm = nps["w-vllm"]
    assert vllm.metadata.owner_references[0].kind == "Worker"
    pods = loom.apps.read_namespaced_deployment("w-vllm", loom.ns).spec.template.metadata.labels
    assert pods["loom.dev/bus-client"] == "true"
    assert all(pods[k] == v for k, v in vllm.spec.pod_selector.match_labels.items())
    # As stored by the server: public addresses on 443 and 8000, plus the listed private ranges.
    (rule,) = model_rules(vllm)
    blocks = [peer.ip_block for peer in rule.to]
    assert blocks[0].cidr == "0.0.0.0/0" and "169.254.0.0/16" in blocks[0]._except
    assert [b.cidr for b in blocks[2:]] == ["10.96.0.0/12", "10.8.0.0/16"]
    assert vllm.spec.ingress[0]._from[1].namespace_selector.match_labels == {
        "kubernetes.io/metadata.name": "monitoring"
    }

    # A removed tier takes its policy with it; a hand-deleted policy comes back.
    loom.patch("Worker", "w", {"tiers": ["local"]})
    wait_for(lambda: sorted(policies()) == ["w-local"], 30, what="w-vllm NetworkPolicy pruned")
    net.delete_namespaced_network_policy("w-local", loom.ns)
    wait_for(lambda: "w-local" in policies(), 30, what="w-local NetworkPolicy put back")
