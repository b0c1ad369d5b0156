"""From a parsed custom resource to its children, per kind (pure: no API client).

One table, :data:`KIND_OPS`, says for each kind of :data:`loom.api.kinds.KINDS` what it references
and how it renders; the reconciler, ``loom render`` and the tests all go through
:func:`render_resource`. A kind missing from the table fails at import, not at its first resource.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loom.api import GROUP_VERSION, PipelineSpec, RouterPolicySpec, ScheduleSpec, WorkerSpec
from loom.api.eval_suite import EvalSuiteSpec
from loom.api.kinds import KIND_NAMES
from loom.api.loader import LoadError, Resource, parse_document
from loom.api.router_policy import WorkerRoute
from loom_operator.render import (
    Owner,
    RenderError,
    render_pipeline,
    render_router_policy,
    render_schedule,
    render_worker,
)
from loom_operator.render.bus_auth import with_identity
from loom_operator.render.eval_suite import name_jobs, render_eval_suite
from loom_operator.settings import Settings


class Stalled(Exception):
    """The spec cannot be acted on until someone changes it."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class WorkerEntry:
    """A Worker as the namespace's router catalog and the scaler see it (from the Kopf index)."""

    name: str
    worker_type: str
    route: WorkerRoute
    tiers: tuple[str, ...]
    spec: WorkerSpec


@dataclass(frozen=True)
class PolicyEntry:
    """A RouterPolicy of a namespace; ``spec`` None when it does not validate."""

    name: str
    spec: RouterPolicySpec | None


@dataclass(frozen=True)
class PipelineEntry:
    """A Pipeline of a namespace as Schedules see it: its goal subject name (from the Kopf index)."""

    name: str
    pipeline_name: str


@dataclass(frozen=True)
class Namespace:
    """What one resource's rendering may read of its namespace."""

    settings: Settings
    keda: bool
    policies: Sequence[PolicyEntry]
    workers: Sequence[WorkerEntry]
    pipelines: Sequence[PipelineEntry]

    def policy(self) -> tuple[RouterPolicySpec | None, str | None]:
        """The spec and name of the RouterPolicy that governs the namespace, if any."""
        eff = effective_policy(self.policies)
        return (eff.spec, eff.name) if eff else (None, None)


def parse_body(body: Mapping[str, Any]) -> Resource:
    """Validate a custom resource body with the shared spec models; Stalled with every problem."""
    meta = body.get("metadata", {})
    doc = {
        "apiVersion": body.get("apiVersion", GROUP_VERSION),
        "kind": body.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": dict(body.get("spec") or {}),
    }
    try:
        (resource,) = parse_document(doc, f"{body.get('kind')}/{meta.get('name')}", 0)
    except LoadError as exc:
        # Problems read "<source>: <Kind>/<name>: spec.<field>: <message>"; keep the field part.
        problems = [p.split(": ", 2)[-1] for p in exc.problems]
        if "name" not in doc["spec"]:
            # spec.name was defaulted from metadata.name: name the field the user wrote.
            problems = [
                "metadata.name" + p.removeprefix("spec.name") if p.startswith("spec.name:") else p
                for p in problems
            ]
        raise Stalled("InvalidSpec", "; ".join(problems)) from None
    return resource


def effective_policy(entries: Iterable[PolicyEntry]) -> PolicyEntry | None:
    """The RouterPolicy that governs a namespace: the first by name (others are Stalled)."""
    return min(entries, key=lambda e: e.name, default=None)


def catalog(entries: Iterable[WorkerEntry]) -> dict[str, WorkerRoute]:
    return {e.worker_type: e.route for e in sorted(entries, key=lambda e: e.name)}


def catalog_hash(routes: Mapping[str, WorkerRoute]) -> str:
    blob = json.dumps({k: v.to_manifest_dict() for k, v in sorted(routes.items())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------- references, per kind


@dataclass(frozen=True)
class Provided:
    """What a namespace provides for others to reference: worker types and pipeline names."""

    worker_types: tuple[str, ...]
    pipelines: tuple[str, ...]

    @classmethod
    def of(cls, workers: Iterable[WorkerEntry], pipelines: Iterable[PipelineEntry]) -> Provided:
        return cls(
            tuple(sorted({w.worker_type for w in workers})),
            tuple(sorted({p.pipeline_name for p in pipelines})),
        )

    def unknown_worker(self, field: str, worker_type: str) -> Stalled:
        return Stalled(
            "UnknownWorkerType",
            f"{field} {worker_type!r} is not served by any Worker of this namespace "
            f"(worker types: {', '.join(self.worker_types) or 'none'})",
        )


def _pipeline_references(spec: PipelineSpec, known: Provided) -> Stalled | None:
    missing = [
        (s.name, s.worker_type) for s in spec.pipeline_stages if s.worker_type not in known.worker_types
    ]
    if not missing:
        return None
    uses = "; ".join(f"stage {stage!r} uses workerType {wt!r}" for stage, wt in missing)
    return Stalled(
        "UnknownWorkerType",
        f"{uses}, which no Worker of this namespace serves "
        f"(worker types: {', '.join(known.worker_types) or 'none'})",
    )


def _schedule_references(spec: ScheduleSpec, known: Provided) -> Stalled | None:
    goal = spec.goal if spec.dispatch_type == "goal" else None
    if goal is not None and goal.pipeline and goal.pipeline not in known.pipelines:
        return Stalled(
            "UnknownPipeline",
            f"goal.pipeline {goal.pipeline!r} is not a Pipeline of this namespace "
            f"(pipelines: {', '.join(known.pipelines) or 'none'})",
        )
    if (
        spec.dispatch_type == "task"
        and spec.task is not None
        and spec.task.worker_type not in known.worker_types
    ):
        return known.unknown_worker("task.workerType", spec.task.worker_type)
    return None


def _eval_suite_references(spec: EvalSuiteSpec, known: Provided) -> Stalled | None:
    return None if spec.worker in known.worker_types else known.unknown_worker("worker", spec.worker)


def _no_references(spec: Any, known: Provided) -> Stalled | None:
    return None


# ----------------------------------------------------------------- rendering, per kind


def _render_worker(owner: Owner, spec: WorkerSpec, ns: Namespace) -> list[dict[str, Any]]:
    policy, policy_name = ns.policy()
    return render_worker(owner, spec, ns.settings, policy=policy, policy_name=policy_name, keda=ns.keda)


def _render_pipeline(owner: Owner, spec: PipelineSpec, ns: Namespace) -> list[dict[str, Any]]:
    return render_pipeline(owner, spec, ns.settings)


def _render_router_policy(owner: Owner, spec: RouterPolicySpec, ns: Namespace) -> list[dict[str, Any]]:
    eff = effective_policy(ns.policies)
    if eff is not None and eff.name != owner.name:
        raise Stalled("Conflict", f"RouterPolicy {eff.name!r} already governs namespace {owner.namespace!r}")
    return render_router_policy(owner, spec, ns.settings, workers=catalog(ns.workers))


def _render_schedule(owner: Owner, spec: ScheduleSpec, ns: Namespace) -> list[dict[str, Any]]:
    return render_schedule(owner, spec, ns.settings)


def _render_eval_suite(owner: Owner, spec: EvalSuiteSpec, ns: Namespace) -> list[dict[str, Any]]:
    policy, policy_name = ns.policy()
    return render_eval_suite(
        owner, spec, ns.settings, workers=ns.workers, policy=policy, policy_name=policy_name
    )


@dataclass(frozen=True)
class KindOps:
    """What the operator does with one kind's spec: check its references, render its children."""

    spec_type: type[Any]
    render: Callable[[Owner, Any, Namespace], list[dict[str, Any]]]
    references: Callable[[Any, Provided], Stalled | None] = _no_references


KIND_OPS: dict[str, KindOps] = {
    "Worker": KindOps(WorkerSpec, _render_worker),
    "Pipeline": KindOps(PipelineSpec, _render_pipeline, _pipeline_references),
    "RouterPolicy": KindOps(RouterPolicySpec, _render_router_policy),
    "Schedule": KindOps(ScheduleSpec, _render_schedule, _schedule_references),
    "EvalSuite": KindOps(EvalSuiteSpec, _render_eval_suite, _eval_suite_references),
}
if set(KIND_OPS) != set(KIND_NAMES):  # pragma: no cover - a kind added to the registry only
    raise ImportError(f"KIND_OPS covers {sorted(KIND_OPS)}, the registry lists {sorted(KIND_NAMES)}")


def ops_for(spec: Any) -> KindOps:
    """The operations for a parsed spec (by its model type)."""
    for ops in KIND_OPS.values():
        if isinstance(spec, ops.spec_type):
            return ops
    raise TypeError(f"no operations for {type(spec).__name__}")


def missing_references(
    spec: Any, workers: Iterable[WorkerEntry], pipelines: Iterable[PipelineEntry]
) -> Stalled | None:
    """Why a resource cannot work: a worker type or pipeline no resource of its namespace provides."""
    return ops_for(spec).references(spec, Provided.of(workers, pipelines))


def render_resource(
    owner: Owner,
    resource: Resource,
    settings: Settings,
    *,
    keda: bool,
    policies: Sequence[PolicyEntry],
    workers: Sequence[WorkerEntry],
    pipelines: Sequence[PipelineEntry],
) -> list[dict[str, Any]]:
    """The children of one parsed resource, given its namespace's policies, workers and pipelines.

    Raises Stalled for what the API server accepted but cannot be rendered or cannot work.
    """
    spec = resource.spec
    ops = ops_for(spec)
    ns = Namespace(settings, keda=keda, policies=policies, workers=workers, pipelines=pipelines)
    missing = ops.references(spec, Provided.of(workers, pipelines))
    if missing is not None:
        raise missing
    try:
        children = ops.render(owner, spec, ns)
        # Jobs are named by a hash of their template, identity included.
        return name_jobs(owner, with_identity(children, owner, spec, settings))
    except RenderError as exc:
        raise Stalled("UnknownTier" if "tier" in str(exc) else "RenderFailed", str(exc)) from None
