"""Render the chart with the real helm binary and check what comes out.

``render`` runs ``helm template`` and parses every document; ``validate`` checks each
object: built-in kinds with kubernetes-validate (strict, Kubernetes 1.33), custom
resources with jsonschema against their CRD's openAPIV3Schema, Prometheus Operator
kinds (no bundled schema) with a structural check of the fields the chart sets.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.support import helm_bin

REPO = Path(__file__).resolve().parents[2]
CHART = Path(os.environ.get("LOOM_CHART_DIR", REPO / "helm" / "loom"))
K8S_VERSION = "1.33"
RELEASE = "loom"
NAMESPACE = "loom-system"
PROMETHEUS_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

#: Value sets rendered and validated by the tests (beyond the defaults).
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster-wide": {
        "image": {"digest": "sha256:" + "a" * 64},
        "operator": {"standby": {"enabled": True}, "nodeSelector": {"kubernetes.io/os": "linux"}},
        "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {"enabled": True, "egress": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"]}},
        "routerPolicy": {"create": True},
        "nats": {
            "credentialsSecret": "nats-creds",
            "tlsSecret": "nats-tls",
            "url": "tls://nats.nats.svc:4222",
            "auth": {"mode": "none"},
        },
    },
    "namespaced": {
        "watchNamespaces": ["team-a", "team-b"],
        "operator": {"standby": {"enabled": True}, "keda": "off"},
        "rbac": {"leases": True},
        "routerPolicy": {"create": True, "namespace": "team-a"},
    },
    "bundled-nats": {
        "nats": {"bundled": {"enabled": True}, "auth": {"tenants": ["a", "b"]}},
        "networkPolicy": {
            "enabled": True,
            "natsMonitorFrom": [{"namespaceSelector": {"matchLabels": {"name": "keda"}}}],
        },
        "podDisruptionBudget": {"enabled": True, "minAvailable": 0},
    },
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Loom"}},
        },
    },
}


class HelmFailed(RuntimeError):
    """helm exited non-zero; the message holds its stderr."""


def run_helm(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_bin.helm(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def values_file(values: dict[str, Any], directory: Path) -> Path:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def template_text(values: dict[str, Any], directory: Path, *extra: str) -> str:
    """The raw output of ``helm template`` (comments kept); raises HelmFailed on error."""
    proc = run_helm(
        [
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "-f",
            str(values_file(values, directory)),
            *extra,
        ]
    )
    if proc.returncode != 0:
        raise HelmFailed(proc.stderr)
    return proc.stdout


def render(values: dict[str, Any], directory: Path, *extra: str) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders for these values."""
    return [d for d in yaml.safe_load_all(template_text(values, directory, *extra)) if d]


def crd_files() -> list[Path]:
    return sorted((CHART / "crds").glob("*.yaml"))


def crd_schemas(objects: Iterable[dict[str, Any]] = ()) -> dict[tuple[str, str], dict[str, Any]]:
    """openAPIV3Schema per (apiVersion, kind): the chart's crds/ plus CRDs among ``objects``."""
    crds = [yaml.safe_load(p.read_text()) for p in crd_files()]
    crds += [o for o in objects if o.get("kind") == "CustomResourceDefinition"]
    out = {}
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = version["schema"][
                "openAPIV3Schema"
            ]
    return out


def validate_custom_resource(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    """jsonschema against the CRD schema (OpenAPI v3 subset; Kubernetes extensions ignored)."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft7Validator(schema).validate(body)


def check_prometheus_object(obj: dict[str, Any]) -> None:
    """The structure the Prometheus Operator requires of the three kinds the chart renders."""
    kind, spec = obj["kind"], obj["spec"]
    assert obj["apiVersion"].startswith("monitoring.coreos.com/"), obj["apiVersion"]
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    if kind in ("ServiceMonitor", "PodMonitor"):
        assert spec["selector"]["matchLabels"], f"{kind} selects nothing"
        ns = spec["namespaceSelector"]
        assert ns.get("any") is True or ns.get("matchNames"), f"{kind} namespaceSelector is empty"
        endpoints = spec["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
        assert endpoints
        for ep in endpoints:
            assert isinstance(ep["port"], str) and ep["port"], ep
            assert ep["path"] == "/metrics"
    elif kind == "PrometheusRule":
        assert spec["groups"]
        names = set()
        for group in spec["groups"]:
            assert group["name"] not in names
            names.add(group["name"])
            for rule in group["rules"]:
                assert set(rule) <= {
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "labels",
                    "annotations",
                    "keep_firing_for",
                }
                assert ("alert" in rule) != ("record" in rule)
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
                assert all(isinstance(v, str) for v in rule.get("labels", {}).values())
                assert all(isinstance(v, str) for v in rule.get("annotations", {}).values())
    else:
        raise AssertionError(f"unexpected kind {kind}")


def validate(objects: list[dict[str, Any]]) -> list[str]:
    """Validate every object; returns the kinds validated by jsonschema (custom resources)."""
    schemas = crd_schemas(objects)
    custom = []
    for obj in objects:
        kind = obj["kind"]
        if kind in PROMETHEUS_KINDS:
            check_prometheus_object(obj)
            continue
        schema = schemas.get((obj["apiVersion"], kind))
        if schema is not None:
            validate_custom_resource(obj, schema)
            custom.append(kind)
            continue
        group = obj["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):
            raise AssertionError(
                f"no schema for custom resource {obj['apiVersion']} {kind} (CRDs not generated?)"
            )
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return custom


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
