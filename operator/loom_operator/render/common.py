"""Building blocks shared by the per-kind render functions (pure: data in, dicts out).

Every child carries the labels of OPERATOR-CONTRACT.md (never ``app.kubernetes.io/instance``:
Argo CD would treat the children as its own and prune them) and, when the owner's uid is
known, a controller ownerReference (without ``blockOwnerDeletion``, which would need
``update`` on the owner's finalizers). Pods run hardened: non-root uid 10001, read-only
root filesystem with an emptyDir at /tmp, no privilege escalation, no capabilities,
RuntimeDefault seccomp, no service-account token.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from loom.api.common import GROUP_VERSION, ResourceRequirements
from loom.api.kinds import KINDS
from loom.settings import REPLICAS_ENV
from loom_operator.settings import Settings

NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
TIER_LABEL = "loom.dev/tier"
#: On every pod the operator renders: the chart's NATS NetworkPolicy admits clients by this label
#: (and by namespace; a label alone is no boundary, anyone who can create a pod can set it).
BUS_CLIENT_LABEL = "loom.dev/bus-client"
MANAGED_BY = "loom-operator"
CONFIG_HASH_ANNOTATION = "loom.dev/config-hash"
CONFIG_DIR = "/etc/loom"
HEALTH_PORT = 9090
RUN_AS = 10001

#: The component label value and the ``loom.dev/<kind>`` label of each kind.
COMPONENTS = {k.kind: k.component for k in KINDS}
KIND_LABELS = {k.kind: k.label for k in KINDS}
LABEL_KINDS = {v: k for k, v in KIND_LABELS.items()}


@dataclass(frozen=True)
class Owner:
    """The custom resource children belong to. ``uid`` is None when rendering offline."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(kind=body["kind"], name=meta["name"], namespace=meta.get("namespace"), uid=meta.get("uid"))


def labels(owner: Owner, tier: str | None = None) -> dict[str, str]:
    """Labels of every child of ``owner`` (and of its pods)."""
    out = {
        NAME_LABEL: "loom",
        COMPONENT_LABEL: COMPONENTS[owner.kind],
        MANAGED_BY_LABEL: MANAGED_BY,
        KIND_LABELS[owner.kind]: owner.name,
    }
    if tier is not None:
        out[TIER_LABEL] = tier
    return out


def selector(owner: Owner, tier: str | None = None) -> dict[str, str]:
    """Immutable Deployment selector: the labels but managed-by (name, component, owner and tier)."""
    return {k: v for k, v in labels(owner, tier).items() if k != MANAGED_BY_LABEL}


def child_selector(owner: Owner) -> str:
    """Label selector (string form) that finds every child of ``owner``."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{KIND_LABELS[owner.kind]}={owner.name}"


def metadata(owner: Owner, name: str, tier: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels(owner, tier)}
    if owner.namespace:
        meta["namespace"] = owner.namespace
    if owner.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": GROUP_VERSION,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
            }
        ]
    return meta


def canonical(data: Any) -> Any:
    """``data`` as the API server hands it back: integral floats as integers (Go's JSON does that).

    Together with sorted keys this makes rendered files independent of how a manifest was
    written, so ``loom render`` output equals what the operator renders from the cluster.
    """
    if isinstance(data, dict):
        return {k: canonical(v) for k, v in data.items()}
    if isinstance(data, list):
        return [canonical(v) for v in data]
    if isinstance(data, float) and data.is_integer():
        return int(data)
    return data


def to_yaml(data: Any) -> str:
    """Canonical YAML (sorted keys, canonical numbers) of a config file the operator renders."""
    return yaml.safe_dump(canonical(data), sort_keys=True, allow_unicode=True, width=120)


def config_hash(data: dict[str, str]) -> str:
    """Short stable hash of a ConfigMap's data: the pod-template annotation that triggers rollouts."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_map(owner: Owner, key: str, text: str) -> dict[str, Any]:
    """ConfigMap ``<owner>-config`` holding one file."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, f"{owner.name}-config"),
        "data": {key: text},
    }


def nats_env(settings: Settings) -> list[dict[str, Any]]:
    """NATS connection environment for every pod (credentials and TLS files from Secrets), and the
    tracing and audit variables (:func:`loom.telemetry.role_env`)."""
    env: list[dict[str, Any]] = [{"name": "LOOM_NATS_URL", "value": settings.nats_url}]
    if settings.nats_replicas is not None:
        env.append({"name": REPLICAS_ENV, "value": str(settings.nats_replicas)})
    env += [{"name": k, "value": v} for k, v in settings.telemetry_env]
    if settings.nats_creds_secret:
        env.append({"name": "LOOM_NATS_CREDS", "value": f"{CONFIG_DIR}/nats/creds"})
    if settings.nats_tls_secret:
        env += [
            {"name": "LOOM_NATS_TLS_CA", "value": f"{CONFIG_DIR}/nats/tls/ca.crt"},
            {"name": "LOOM_NATS_TLS_CERT", "value": f"{CONFIG_DIR}/nats/tls/tls.crt"},
            {"name": "LOOM_NATS_TLS_KEY", "value": f"{CONFIG_DIR}/nats/tls/tls.key"},
        ]
    return env


def _mounts_and_volumes(
    owner: Owner, config_key: str, settings: Settings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # The config file is mounted by subPath: it needs no live update (a change rolls the pods
    # through the config-hash annotation) and leaves /etc/loom free for the NATS mounts.
    mounts: list[dict[str, Any]] = [
        {
            "name": "config",
            "mountPath": f"{CONFIG_DIR}/{config_key}",
            "subPath": config_key,
            "readOnly": True,
        },
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{owner.name}-config"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    nats_mounts, nats_volumes = nats_files(settings)
    return mounts + nats_mounts, volumes + nats_volumes


def nats_files(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Mounts and volumes of the shared NATS credentials and TLS files (from Secrets), if any."""
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    if settings.nats_creds_secret:
        mounts.append(
            {
                "name": "nats-creds",
                "mountPath": f"{CONFIG_DIR}/nats/creds",
                "subPath": "creds",
                "readOnly": True,
            }
        )
        volumes.append(
            {
                "name": "nats-creds",
                "secret": {
                    "secretName": settings.nats_creds_secret,
                    "items": [{"key": "creds", "path": "creds"}],
                },
            }
        )
    if settings.nats_tls_secret:
        mounts.append({"name": "nats-tls", "mountPath": f"{CONFIG_DIR}/nats/tls", "readOnly": True})
        volumes.append({"name": "nats-tls", "secret": {"secretName": settings.nats_tls_secret}})
    return mounts, volumes


#: The container and pod hardening of every pod the operator renders.
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_HARDENING: dict[str, Any] = {
    "automountServiceAccountToken": False,
    "enableServiceLinks": False,
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def deployment(
    owner: Owner,
    *,
    name: str,
    args: list[str],
    config_key: str,
    hash_: str,
    resources: ResourceRequirements,
    settings: Settings,
    replicas: int | None,
    tier: str | None = None,
    env: list[dict[str, Any]] | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """A hardened Deployment running ``loom <args>`` with the owner's config mounted.

    ``replicas`` None leaves the field out entirely, so an autoscaler that owns it
    (KEDA, or the built-in scaler through the scale subresource) is never overwritten.
    """
    mounts, volumes = _mounts_and_volumes(owner, config_key, settings)
    container: dict[str, Any] = {
        "name": COMPONENTS[owner.kind],
        "image": image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["loom"],
        "args": args,
        "ports": [{"name": "metrics", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "env": [
            *nats_env(settings),
            {"name": "LOOM_METRICS_PORT", "value": str(HEALTH_PORT)},
            {"name": "LOOM_LOG_JSON", "value": "1"},
            *(env or []),
        ],
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "resources": resources.to_manifest_dict(),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(owner, tier)},
        "template": {
            "metadata": {
                "labels": {**labels(owner, tier), BUS_CLIENT_LABEL: "true"},
                "annotations": {CONFIG_HASH_ANNOTATION: hash_},
            },
            "spec": {
                **copy.deepcopy(POD_HARDENING),
                "terminationGracePeriodSeconds": 60,
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, name, tier),
        "spec": spec,
    }


def metrics_service(owner: Owner) -> dict[str, Any]:
    """ClusterIP Service ``<owner>-metrics`` over all the owner's pods, port ``metrics``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, f"{owner.name}-metrics"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(owner),
            "ports": [{"name": "metrics", "port": HEALTH_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def manifest_text(kind: str, owner: Owner, spec: dict[str, Any]) -> str:
    """The custom-resource manifest the runtime loads (``loom <role> --config``), as YAML."""
    meta: dict[str, Any] = {"name": owner.name}
    if owner.namespace:
        meta["namespace"] = owner.namespace
    return to_yaml({"apiVersion": GROUP_VERSION, "kind": kind, "metadata": meta, "spec": spec})


class RenderError(ValueError):
    """A spec the API server accepted but that cannot be rendered (the resource goes Stalled)."""
