"""The chart, rendered by the real helm binary for several value sets and validated object by object."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import chart, helm_bin
from tests.support.chart import NAMESPACE, RELEASE, VALUE_SETS, by_kind, env_of, one

FULLNAME = f"{RELEASE}-loom" if "loom" not in RELEASE else RELEASE
APP_VERSION = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["appVersion"]
INSTANCE = "app.kubernetes.io/instance"
CONTRACT_ENV = {
    "LOOM_WATCH_NAMESPACES",
    "LOOM_NATS_URL",
    "LOOM_NATS_MONITOR_URL",
    "LOOM_IMAGE",
    "LOOM_IMAGE_PULL_POLICY",
    "LOOM_KEDA",
    "LOOM_SCALER_INTERVAL",
    "LOOM_METRICS_PORT",
}
# OPERATOR-CONTRACT.md, rule by rule: (apiGroup, resource) -> verbs.
CONTRACT_RULES: dict[tuple[str, str], set[str]] = {
    **{
        ("loom.dev", r): {"get", "list", "watch", "patch"}
        for r in ("workers", "pipelines", "routerpolicies", "schedules", "evalsuites")
    },
    **{
        ("loom.dev", f"{r}/status"): {"get", "patch", "update"}
        for r in ("workers", "pipelines", "routerpolicies", "schedules", "evalsuites")
    },
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("apps", "deployments/scale"): {"get", "patch", "update"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
}
LEASES = {("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "patch"}}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    try:
        helm_bin.helm()
    except helm_bin.ToolUnavailable as exc:
        pytest.fail(str(exc))
    return {
        name: chart.render(values, tmp_path_factory.mktemp(name), "--include-crds")
        for name, values in VALUE_SETS.items()
    }


def flat_rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint(name: str, tmp_path: Path) -> None:
    proc = chart.run_helm(
        ["lint", "--strict", str(chart.CHART), "-f", str(chart.values_file(VALUE_SETS[name], tmp_path))]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_validates(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = [o for o in rendered[name] if o["apiVersion"].split("/")[0] != "loom.dev" or chart.crd_files()]
    assert objects
    chart.validate(objects)


def test_custom_resources_validate_against_the_generated_crds(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert chart.crd_files(), "helm/loom/crds/ is empty: python -m loom_operator.crdgen writes it"
    crds = by_kind(rendered["default"], "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} >= {
        "workers.loom.dev",
        "pipelines.loom.dev",
        "routerpolicies.loom.dev",
        "schedules.loom.dev",
    }
    for name in ("cluster-wide", "namespaced"):
        assert "RouterPolicy" in chart.validate(rendered[name])
    # A RouterPolicy the API server would reject fails here too.
    policy = one(rendered["cluster-wide"], "RouterPolicy")
    schemas = chart.crd_schemas()
    bad = {**policy, "spec": {**policy["spec"], "tiers": [{"name": "Not A Tier", "backend": "local"}]}}
    with pytest.raises(Exception, match="does not match"):
        chart.validate_custom_resource(bad, schemas[("loom.dev/v1alpha1", "RouterPolicy")])


def test_default_operator_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dep = one(rendered["default"], "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/loom-dev/loom:{APP_VERSION}"
    assert container["args"] == ["operator"]
    assert "command" not in container  # the image's ENTRYPOINT is `loom`
    env = env_of(dep)
    assert set(env) >= CONTRACT_ENV
    assert env["LOOM_WATCH_NAMESPACES"] == ""
    assert env["LOOM_NATS_URL"] == "nats://nats:4222"
    assert env["LOOM_NATS_MONITOR_URL"] == "http://nats:8222"
    assert env["LOOM_IMAGE"] == container["image"]
    assert env["LOOM_METRICS_PORT"] == "8080"
    assert "LOOM_NATS_CREDS_SECRET" not in env and "LOOM_NATS_TLS_SECRET" not in env
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # Pod security: non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp.
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert pod["serviceAccountName"] == one(rendered["default"], "ServiceAccount")["metadata"]["name"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_default_renders_nothing_optional(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {o["kind"] for o in rendered["default"]}
    # The admission policy that keeps the operator's writes to its own objects is on by default.
    required = {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "NetworkPolicy",
        "Secret",  # the key of generated NATS passwords (nats.auth.mode generated)
    }
    assert kinds in (required, required | {"CustomResourceDefinition"})


def test_image_by_digest_and_connection_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dep = one(rendered["cluster-wide"], "Deployment")
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/loom-dev/loom@sha256:" + "a" * 64
    env = env_of(dep)
    assert env["LOOM_IMAGE"] == image
    assert env["LOOM_NATS_URL"] == "tls://nats.nats.svc:4222"
    assert env["LOOM_NATS_CREDS_SECRET"] == "nats-creds" and env["LOOM_NATS_TLS_SECRET"] == "nats-tls"
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_cluster_wide_rbac_is_exactly_the_contract(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cluster-wide"]
    assert not by_kind(objects, "Role")
    role = one(objects, "ClusterRole")
    assert flat_rules(role) == CONTRACT_RULES
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(objects, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]


def test_namespaced_rbac_is_a_role_per_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["namespaced"]
    env = env_of(one(objects, "Deployment"))
    assert env["LOOM_WATCH_NAMESPACES"] == "team-a,team-b"
    assert env["LOOM_KEDA"] == "off"
    cluster_role = one(objects, "ClusterRole")
    assert flat_rules(cluster_role) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}
    }
    # (The release namespace's Role for the NATS users Secret: tests/packaging/test_bus_auth_chart.py.)
    roles = [r for r in by_kind(objects, "Role") if not r["metadata"]["name"].endswith("-nats-auth")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    namespaced_contract = {
        k: v
        for k, v in CONTRACT_RULES.items()
        if k
        not in {
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("", "namespaces"),
            ("kopf.dev", "clusterkopfpeerings"),
        }
    }
    for role in roles:
        assert flat_rules(role) == namespaced_contract | LEASES | {("", "secrets"): {"create", "patch"}}
    bindings = [
        b for b in by_kind(objects, "RoleBinding") if not b["metadata"]["name"].endswith("-nats-auth")
    ]
    assert sorted((b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in bindings) == [
        ("team-a", "Role"),
        ("team-b", "Role"),
    ]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == NAMESPACE
    # The default RouterPolicy goes where it is asked to.
    assert one(objects, "RouterPolicy")["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize("name", ["cluster-wide", "namespaced"])
def test_every_rbac_rule_has_a_comment(name: str, tmp_path: Path) -> None:
    text = chart.template_text(VALUE_SETS[name], tmp_path, "--show-only", "templates/rbac.yaml")
    rules = 0
    for doc in text.split("\n---"):
        if not re.search(r"^kind: (Cluster)?Role$", doc, re.MULTILINE):
            continue
        lines = doc.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("- apiGroups:"):
                rules += 1
                assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 20, (
                    f"rule without a reason: {line}"
                )
    assert rules == (14 if name == "cluster-wide" else 30)


def test_hot_standby_uses_kopf_peering(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, kind in (("cluster-wide", "ClusterKopfPeering"), ("namespaced", "KopfPeering")):
        objects = rendered[name]
        dep = one(objects, "Deployment")
        assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "Recreate"
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        peerings = by_kind(objects, kind)
        assert peerings, kind
        assert args == ["operator", f"--peering={peerings[0]['metadata']['name']}"]
        for p in peerings:
            assert p["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
        crds = {c["metadata"]["name"]: c for c in by_kind(objects, "CustomResourceDefinition")}
        for crd in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
            assert crds[crd]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert sorted(p["metadata"]["namespace"] for p in by_kind(rendered["namespaced"], "KopfPeering")) == [
        "team-a",
        "team-b",
    ]


def test_bundled_nats(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["bundled-nats"]
    sts = one(objects, "StatefulSet")
    container, reloader = sts["spec"]["template"]["spec"]["containers"]  # reloader: test_bus_auth_chart.py
    assert container["image"] == reloader["image"] == "nats:2.10-alpine"
    assert {p["containerPort"] for p in container["ports"]} == {4222, 8222}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    conf = one(objects, "ConfigMap", f"{FULLNAME}-nats-config")["data"]["nats.conf"]
    assert re.search(r"jetstream \{\s*store_dir: /data", conf)
    svc = one(objects, "Service", f"{FULLNAME}-nats")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"client": 4222, "monitor": 8222}
    env = env_of(one(objects, "Deployment"))
    assert env["LOOM_NATS_URL"] == f"nats://{FULLNAME}-nats.{NAMESPACE}.svc:4222"
    assert env["LOOM_NATS_MONITOR_URL"] == f"http://{FULLNAME}-nats.{NAMESPACE}.svc:8222"
    assert one(objects, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 0,
        "selector": one(objects, "Deployment")["spec"]["selector"],
    }
    # The NetworkPolicy of NATS admits clients and, on the monitoring port, the operator and KEDA
    # (tests/packaging/test_network_policy.py has the details).
    np = one(objects, "NetworkPolicy", f"{FULLNAME}-nats")
    client, monitor = np["spec"]["ingress"]
    assert client["ports"][0]["port"] == "client"
    assert client["from"][0]["podSelector"]["matchLabels"] == {"loom.dev/bus-client": "true"}
    assert monitor["from"][0]["podSelector"] == one(objects, "Deployment")["spec"]["selector"]
    assert monitor["from"][1] == {"namespaceSelector": {"matchLabels": {"name": "keda"}}}


def test_selectors_never_match_operator_children(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Chart selectors include instance and component: never true of the operator's children."""
    child_labels = {
        "app.kubernetes.io/name": "loom",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "loom-operator",
        "loom.dev/worker": "summarizer",
        "loom.dev/tier": "standard",
    }
    for objects in rendered.values():
        for obj in objects:
            selector = None
            if obj["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
                selector = obj["spec"]["selector"]["matchLabels"]
            elif obj["kind"] == "Service":
                selector = obj["spec"]["selector"]
            elif obj["kind"] == "NetworkPolicy":
                selector = obj["spec"]["podSelector"]["matchLabels"]
            if selector is None:
                continue
            assert INSTANCE in selector, obj["metadata"]["name"]
            assert not all(child_labels.get(k) == v for k, v in selector.items())


def test_routerpolicy_is_optional_and_takes_the_given_spec(tmp_path: Path) -> None:
    spec = {"tiers": [{"name": "local", "backend": "local"}], "onLimit": {"maxWaitSeconds": 5}}
    objects = chart.render({"routerPolicy": {"create": True, "name": "edge", "spec": spec}}, tmp_path)
    policy = one(objects, "RouterPolicy")
    assert policy["metadata"] == {
        "name": "edge",
        "namespace": NAMESPACE,
        "labels": policy["metadata"]["labels"],
    }
    assert policy["spec"]["tiers"] == spec["tiers"]
