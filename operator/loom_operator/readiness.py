"""Readiness of a resource from its child Deployments, pure.

A Deployment counts as available at its desired size when the controller has seen
its latest generation and every desired replica is updated and available, with no
old pods left (``status.replicas`` equals the desired count). Zero desired replicas
(a tier scaled to zero, a suspended Schedule) is available as soon as nothing runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loom_operator.conditions import Phase
from loom_operator.render.common import CONFIG_HASH_ANNOTATION, KIND_LABELS, TIER_LABEL


@dataclass(frozen=True)
class ChildDeployment:
    """What readiness needs from one child Deployment."""

    namespace: str
    name: str
    owner_kind: str
    owner_name: str
    tier: str | None
    uid: str
    generation: int
    observed_generation: int
    replicas: int
    status_replicas: int
    updated_replicas: int
    ready_replicas: int
    available_replicas: int
    config_hash: str | None
    resource_version: int = 0

    @property
    def freshness(self) -> tuple[int, int]:
        """Order of two views of the same Deployment (an apply response vs. a watch event)."""
        return (self.generation, self.resource_version)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ChildDeployment | None:
        """From a Deployment body; None when it is not a Loom child (no ``loom.dev/<kind>`` label)."""
        meta = body.get("metadata", {})
        labels = meta.get("labels") or {}
        owner = next(((kind, labels[label]) for kind, label in KIND_LABELS.items() if label in labels), None)
        if owner is None:
            return None
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        template_meta = (spec.get("template") or {}).get("metadata") or {}
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta["name"],
            owner_kind=owner[0],
            owner_name=owner[1],
            tier=labels.get(TIER_LABEL),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            replicas=int(spec.get("replicas", 1)),
            status_replicas=int(status.get("replicas", 0)),
            updated_replicas=int(status.get("updatedReplicas", 0)),
            ready_replicas=int(status.get("readyReplicas", 0)),
            available_replicas=int(status.get("availableReplicas", 0)),
            config_hash=(template_meta.get("annotations") or {}).get(CONFIG_HASH_ANNOTATION),
            resource_version=int(rv) if (rv := str(meta.get("resourceVersion", "0"))).isdigit() else 0,
        )

    @property
    def available(self) -> bool:
        if self.observed_generation < self.generation:
            return False
        if self.replicas == 0:
            return self.status_replicas == 0
        return (
            self.updated_replicas >= self.replicas
            and self.available_replicas >= self.replicas
            and self.status_replicas == self.replicas
        )

    def progress(self) -> str:
        if self.observed_generation < self.generation:
            return f"{self.name}: rollout not yet observed"
        return (
            f"{self.name}: {self.available_replicas}/{self.replicas} available, "
            f"{self.updated_replicas} updated, {self.status_replicas} total"
        )


def freshest(*views: Iterable[ChildDeployment]) -> dict[str, ChildDeployment]:
    """Per Deployment name, the most recent of several views (watch index, apply responses)."""
    out: dict[str, ChildDeployment] = {}
    for view in views:
        for child in view:
            have = out.get(child.name)
            if have is None or child.freshness >= have.freshness:
                out[child.name] = child
    return out


def phase_of(expected: Iterable[str], children: Iterable[ChildDeployment]) -> Phase:
    """Ready when every expected Deployment exists and is available at its desired size."""
    by_name = {c.name: c for c in children}
    missing = [n for n in expected if n not in by_name]
    if missing:
        return Phase.progressing("Creating", f"waiting for Deployment {', '.join(sorted(missing))}")
    pending = [by_name[n] for n in sorted(expected) if not by_name[n].available]
    if pending:
        return Phase.progressing("RollingOut", "; ".join(c.progress() for c in pending))
    return Phase.ready()
