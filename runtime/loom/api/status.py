"""Status models of the resources (kstatus): what the operator writes and the CRD schemas publish."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loom.api.common import Condition, SpecModel


class CommonStatus(SpecModel):
    """What every Loom resource reports: the generation it acted on and kstatus conditions."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation the conditions describe."
    )
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, description="Ready, Reconciling and Stalled (kstatus)."
    )
    kopf: dict[str, Any] | None = Field(
        default=None, description="Operator bookkeeping (handler progress, last handled spec)."
    )


class TierStatus(SpecModel):
    """One tier's Deployment as last seen."""

    name: str = Field(description="Tier name.")
    replicas: int = Field(default=0, description="Replicas the Deployment currently asks for.")
    ready_replicas: int = Field(default=0, description="Replicas that are ready.")
    desired_replicas: int | None = Field(
        default=None, description="What the autoscaler wants (unset when autoscaling is off or KEDA owns it)."
    )
    lag: int | None = Field(
        default=None, description="Pending + unacknowledged tasks on the tier's consumer (built-in scaler)."
    )


class WorkerStatus(CommonStatus):
    """Worker status: per-tier replicas and lag, plus one-line summaries for ``kubectl get``."""

    tiers: list[TierStatus] = Field(default_factory=list, max_length=20)
    tier_names: str = Field(default="", description="Served tiers, comma separated.")
    replica_summary: str = Field(default="", description="Ready/desired replicas over all tiers.")
    lag: int | None = Field(default=None, description="Consumer lag summed over tiers (built-in scaler).")


class PipelineStatus(CommonStatus):
    """Pipeline status."""

    stages: int = Field(default=0, description="Number of stages.")


class LimitUse(SpecModel):
    """One limit or budget of a RouterPolicy in its current window."""

    scope: str = Field(
        description="tier:<tier>, tenant:<tenant>, or tenant:* (the unlisted tenants' shared limits)."
    )
    what: str = Field(
        description="requests, tokens or in_flight (limits); tokens/day, tokens/month, cost/day or "
        "cost/month (budgets)."
    )
    window: str = Field(description="The window: a date (budgets), <seconds>s#<index> or now (limits).")
    used: float | None = Field(
        default=None,
        description="Used in the window, all router replicas; unset when one router keeps it in memory.",
    )
    limit: float = Field(description="The limit per window (cost in the prices' currency).")


class RouterPolicyStatus(CommonStatus):
    """RouterPolicy status."""

    tier_names: str = Field(default="", description="Defined tiers, comma separated.")
    workers: int = Field(default=0, description="Worker types in the router's catalog.")
    #: Written by the operator's usage loop (:mod:`loom_operator.router_usage`), not by reconciles: left
    #: out of the model's dumps so a reconcile's merge patch never clears it.
    usage: list[LimitUse] | None = Field(
        default=None,
        exclude=True,
        max_length=500,
        description="Each limit and budget the spec declares, with its use in the current window "
        "(read from NATS every LOOM_USAGE_INTERVAL seconds).",
    )
    usage_time: str | None = Field(default=None, exclude=True, description="When usage was read (RFC 3339).")


class ScheduleStatus(CommonStatus):
    """Schedule status, CronJob-like."""

    schedule: str = Field(default="", description="The cron expression or 'every <n>s'.")
    last_schedule_time: str | None = Field(
        default=None, description="The most recent fire time due (RFC 3339) while the scheduler ran."
    )
    next_schedule_time: str | None = Field(default=None, description="The next fire time (RFC 3339).")


class EvalRun(SpecModel):
    """The last finished run of an EvalSuite's Job (from the Job's termination message)."""

    job_name: str = Field(default="", description="The Job that ran it.")
    passed: bool = Field(description="Whether the gate passed (score at or above the threshold).")
    score: float | None = Field(default=None, description="Aggregate score (mean of the case scores).")
    threshold: float | None = Field(default=None, description="Aggregate score the suite had to reach.")
    cases: int = Field(default=0, description="Cases run.")
    passed_cases: int = Field(default=0, description="Cases that reached the case threshold.")
    failed_cases: list[str] = Field(
        default_factory=list, max_length=20, description="Ids of failed cases (the first 20)."
    )
    reasons: list[str] = Field(default_factory=list, max_length=10, description="Why the gate failed.")
    baseline: str | None = Field(default=None, description="The baseline the run was compared with.")
    regressed_cases: list[str] = Field(
        default_factory=list, max_length=20, description="Ids of cases that regressed against it (first 20)."
    )
    finished_at: str | None = Field(default=None, description="When the Job's pod finished (RFC 3339).")


class EvalSuiteStatus(CommonStatus):
    """EvalSuite status: the current spec's Job and the result of its run."""

    job_name: str = Field(default="", description="The Job running the current spec.")
    last_run: EvalRun | None = Field(default=None, description="The result of the current spec's Job.")


STATUS_MODELS: dict[str, type[CommonStatus]] = {
    "Worker": WorkerStatus,
    "Pipeline": PipelineStatus,
    "RouterPolicy": RouterPolicyStatus,
    "Schedule": ScheduleStatus,
    "EvalSuite": EvalSuiteStatus,
}
