"""Each kind's own status fields, built as its status model (pure).

The reconciler adds ``observedGeneration`` and the kstatus conditions; what else a kind reports
comes from :data:`STATUS_BUILDERS`, one function per kind returning the model the CRD schema is
generated from, so what is written and what the schema publishes cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from loom.api import PipelineSpec, RouterPolicySpec, ScheduleSpec, WorkerSpec
from loom.api.eval_suite import EvalSuiteSpec
from loom.api.kinds import KIND_NAMES
from loom.api.status import (
    CommonStatus,
    EvalRun,
    EvalSuiteStatus,
    PipelineStatus,
    RouterPolicyStatus,
    ScheduleStatus,
    TierStatus,
    WorkerStatus,
)
from loom_operator.conditions import rfc3339
from loom_operator.readiness import ChildDeployment
from loom_operator.render.schedule import describe, fire_times


@dataclass(frozen=True)
class Observation:
    """What the built-in scaler last saw and decided for one tier."""

    lag: int
    desired: int


@dataclass(frozen=True)
class StatusView:
    """What the reconciler knows of one resource besides its spec when it writes status."""

    now: datetime
    created: datetime
    #: Child Deployments by tier (None for kinds without tiers).
    children: Mapping[str | None, ChildDeployment] = field(default_factory=dict)
    #: The built-in scaler's view per tier.
    observations: Mapping[str, Observation] = field(default_factory=dict)
    #: Worker types in the namespace's router catalog.
    catalog_size: int = 0
    #: EvalSuite: the Job of the current spec, and its verdict once there is one.
    job: str | None = None
    eval_run: EvalRun | None = None
    #: The status as last written (fields kept until there is something newer).
    previous: Mapping[str, Any] = field(default_factory=dict)


def _worker(spec: WorkerSpec, view: StatusView) -> WorkerStatus:
    tiers = []
    lag_total: int | None = None
    for tier in spec.served_tiers:
        child = view.children.get(tier)
        obs = view.observations.get(tier)
        tiers.append(
            TierStatus(
                name=tier,
                replicas=child.replicas if child else 0,
                ready_replicas=child.ready_replicas if child else 0,
                lag=obs.lag if obs else None,
                desired_replicas=obs.desired if obs else None,
            )
        )
        if obs is not None:
            lag_total = (lag_total or 0) + obs.lag
    return WorkerStatus(
        tiers=tiers,
        tier_names=",".join(spec.served_tiers),
        replica_summary=f"{sum(t.ready_replicas for t in tiers)}/{sum(t.replicas for t in tiers)}",
        lag=lag_total,
    )


def _pipeline(spec: PipelineSpec, view: StatusView) -> PipelineStatus:
    return PipelineStatus(stages=len(spec.pipeline_stages))


def _router_policy(spec: RouterPolicySpec, view: StatusView) -> RouterPolicyStatus:
    return RouterPolicyStatus(tier_names=",".join(spec.tier_names), workers=view.catalog_size)


def _schedule(spec: ScheduleSpec, view: StatusView) -> ScheduleStatus:
    last, nxt = fire_times(spec, view.created, view.now)
    return ScheduleStatus(
        schedule=describe(spec),
        last_schedule_time=rfc3339(last) if last else None,
        next_schedule_time=rfc3339(nxt) if nxt else None,
    )


def _eval_suite(spec: EvalSuiteSpec, view: StatusView) -> EvalSuiteStatus | None:
    if view.job is None:
        return None
    # Until the current Job has a verdict, lastRun stays the previous one.
    run = view.eval_run or _previous_run(view.previous.get("lastRun"))
    return EvalSuiteStatus(job_name=view.job, last_run=run)


def _previous_run(previous: Any) -> EvalRun | None:
    """The last written run; one that no longer reads as a run (edited by hand) is dropped."""
    try:
        return EvalRun.model_validate(previous) if isinstance(previous, Mapping) else None
    except ValidationError:
        return None


#: Per kind: the kind's status model for a parsed spec, or None when it has nothing to add yet.
STATUS_BUILDERS: dict[str, Callable[[Any, StatusView], CommonStatus | None]] = {
    "Worker": _worker,
    "Pipeline": _pipeline,
    "RouterPolicy": _router_policy,
    "Schedule": _schedule,
    "EvalSuite": _eval_suite,
}
if set(STATUS_BUILDERS) != set(KIND_NAMES):  # pragma: no cover - a kind added to the registry only
    raise ImportError(
        f"STATUS_BUILDERS covers {sorted(STATUS_BUILDERS)}, the registry lists {sorted(KIND_NAMES)}"
    )


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def kind_fields(kind: str, spec: Any, view: StatusView) -> dict[str, Any]:
    """The kind's own status fields, camelCase. A top-level None is kept: the merge patch clears it."""
    model = STATUS_BUILDERS[kind](spec, view)
    if model is None:
        return {}
    dumped = model.model_dump(by_alias=True, mode="json", exclude=set(CommonStatus.model_fields))
    return {key: _without_none(value) for key, value in dumped.items()}
