"""The chart's network defaults: NetworkPolicies on, NATS clients by operator label AND namespace,
metrics and NATS monitoring closed to other namespaces, the operator told how to render worker policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import chart
from tests.support.chart import NAMESPACE, RELEASE, env_of, one

FULLNAME = f"{RELEASE}-loom" if "loom" not in RELEASE else RELEASE
BUS_CLIENT = {"matchLabels": {"loom.dev/bus-client": "true"}}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def namespace_peer(ns: str) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "podSelector": BUS_CLIENT,
    }


def render(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    objects = chart.render(values, tmp_path)
    chart.validate(objects)
    return objects


def test_default_is_on_and_the_operator_accepts_metrics_only_from_its_namespace(tmp_path: Path) -> None:
    objects = render(tmp_path, {})
    np = one(objects, "NetworkPolicy", f"{FULLNAME}-operator")
    assert np["spec"]["ingress"] == [
        {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [{"podSelector": {}}]}
    ]
    policy = json.loads(env_of(one(objects, "Deployment"))["LOOM_NETWORK_POLICY"])
    assert policy == {"natsTo": [], "metricsFrom": [], "allowedCIDRs": [], "extraEgress": []}


def test_bundled_nats_admits_labelled_pods_of_listed_namespaces_only(tmp_path: Path) -> None:
    objects = render(
        tmp_path,
        {
            "nats": {"bundled": {"enabled": True}},
            "watchNamespaces": ["team-a"],
            "networkPolicy": {"natsClientNamespaces": ["team-b", "team-a"], "metricsFrom": [MONITORING]},
        },
    )
    np = one(objects, "NetworkPolicy", f"{FULLNAME}-nats")
    client, monitor = np["spec"]["ingress"]
    assert client["ports"] == [{"port": "client", "protocol": "TCP"}]
    # Every peer names its namespace: the release namespace, the watched ones, the listed ones (once each).
    assert client["from"] == [namespace_peer(NAMESPACE), namespace_peer("team-a"), namespace_peer("team-b")]
    assert all("namespaceSelector" in peer and peer["namespaceSelector"] for peer in client["from"])
    # Monitoring: the operator pods (same namespace, no namespaceSelector) and the monitoring namespace.
    assert monitor["ports"] == [{"port": "monitor", "protocol": "TCP"}]
    operator_pods, scraper = monitor["from"]
    assert set(operator_pods) == {"podSelector"}
    assert operator_pods["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert scraper == MONITORING
    operator = one(objects, "NetworkPolicy", f"{FULLNAME}-operator")
    assert operator["spec"]["ingress"][0]["from"] == [{"podSelector": {}}, MONITORING]
    # The worker policies reach the bundled NATS by its namespace and pod labels.
    policy = json.loads(env_of(one(objects, "Deployment"))["LOOM_NETWORK_POLICY"])
    (nats_peer,) = policy["natsTo"]
    assert nats_peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    sts = one(objects, "StatefulSet")
    assert nats_peer["podSelector"]["matchLabels"] == sts["spec"]["template"]["metadata"]["labels"]
    assert policy["metricsFrom"] == [MONITORING]


def test_worker_policy_values_reach_the_operator_and_off_means_no_policies(tmp_path: Path) -> None:
    extra = {"ports": [{"port": 11434, "protocol": "TCP"}], "to": [MONITORING]}
    values = {
        "networkPolicy": {
            "workerPolicy": {
                "natsTo": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
                "allowedCIDRs": ["10.8.0.0/16"],
                "extraEgress": [extra],
            }
        }
    }
    policy = json.loads(env_of(one(render(tmp_path, values), "Deployment"))["LOOM_NETWORK_POLICY"])
    assert policy["natsTo"] == [{"ipBlock": {"cidr": "10.1.2.3/32"}}]
    assert policy["allowedCIDRs"] == ["10.8.0.0/16"] and policy["extraEgress"] == [extra]
    off = render(tmp_path, {"networkPolicy": {"workerPolicy": {"enabled": False}}})
    assert "LOOM_NETWORK_POLICY" not in env_of(one(off, "Deployment"))
    none = render(tmp_path, {"networkPolicy": {"enabled": False}, "nats": {"bundled": {"enabled": True}}})
    assert not [o for o in none if o["kind"] == "NetworkPolicy"]
    assert "LOOM_NETWORK_POLICY" not in env_of(one(none, "Deployment"))


def test_operator_may_write_network_policies_only_where_it_manages_them(tmp_path: Path) -> None:
    objects = chart.render({}, tmp_path, "--kube-version", "1.31.0")
    role = one(objects, "ClusterRole", f"{FULLNAME}-operator")
    (rule,) = [r for r in role["rules"] if "networkpolicies" in r["resources"]]
    assert rule["apiGroups"] == ["networking.k8s.io"] and "delete" in rule["verbs"]
    vap = one(objects, "ValidatingAdmissionPolicy")
    assert any(
        r["apiGroups"] == ["networking.k8s.io"] and r["resources"] == ["networkpolicies"]
        for r in vap["spec"]["matchConstraints"]["resourceRules"]
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"networkPolicy": {"natsClientNamespaces": ["Team_A"]}}, "natsClientNamespaces"),
        ({"networkPolicy": {"workerPolicy": {"allowedCIDRs": ["vllm.svc"]}}}, "allowedCIDRs"),
        ({"networkPolicy": {"workerPolicy": {"natsFrom": []}}}, "natsFrom"),
    ],
)
def test_bad_network_values_are_refused_by_the_schema(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(chart.HelmFailed, match=message):
        chart.render(values, tmp_path)
