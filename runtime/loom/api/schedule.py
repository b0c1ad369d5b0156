"""The Schedule custom resource: cron or fixed-interval dispatch of a goal or a task.

Each fire is published with ``Nats-Msg-Id: <schedule>/<fire time>`` so JetStream's
duplicate window makes a slot fire once however many scheduler replicas run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loom.api.common import SpecModel, TierName, WorkerType, cel, known_time_zone, with_validations

_CRON_FIELD = r"[0-9A-Za-z*/,?LW#-]+"
CRON_PATTERN = (
    r"^(@(annually|yearly|monthly|weekly|daily|midnight|hourly)|"
    rf"({_CRON_FIELD}\s+){{4,5}}{_CRON_FIELD})$"
)


def cron_field_problem(expression: str) -> str | None:
    """Why a (non-``@``) cron expression has the wrong number of fields, or None."""
    count = len(expression.split())
    if count in (5, 6):
        return None
    return (
        f"cron needs 5 fields (minute hour day-of-month month day-of-week; a 6th for seconds "
        f"is allowed), got {count}: {expression!r}"
    )


class GoalTemplate(SpecModel):
    """A goal to submit: to a pipeline (``loom.goals.<pipeline>``) or the orchestrator."""

    instruction: str = Field(default="", description="What the goal asks for.")
    context: dict[str, Any] = Field(default_factory=dict, description="goal.context for the pipeline.")
    pipeline: str | None = Field(
        default=None, description="Pipeline name; unset sends the goal to the orchestrator."
    )
    priority: int = Field(default=1, ge=0, le=3, description="0 low, 1 normal, 2 high, 3 critical.")


class TaskTemplate(SpecModel):
    """A task to submit to the router."""

    worker_type: WorkerType
    tier: TierName | None = Field(default=None, description="Model tier; the worker's default if unset.")
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=1, ge=0, le=3)


_SCHEDULE_RULES = [
    cel("has(self.cron) != has(self.intervalSeconds)", "set exactly one of cron or intervalSeconds"),
    cel("self.dispatchType != 'goal' || has(self.goal)", "dispatchType goal needs goal"),
    cel("self.dispatchType != 'task' || has(self.task)", "dispatchType task needs task"),
]


class ScheduleSpec(SpecModel):
    """When to fire, what to send, and what to do about fires missed while nothing ran."""

    model_config = with_validations(SpecModel.model_config, _SCHEDULE_RULES)

    name: str | None = Field(
        default=None, max_length=63, description="Schedule name; defaults to metadata.name."
    )
    cron: str | None = Field(
        default=None, pattern=CRON_PATTERN, description="Cron expression (5 or 6 fields, or @hourly etc.)."
    )
    interval_seconds: int | None = Field(default=None, ge=1, le=31_536_000, description="Fixed interval.")
    timezone: str = Field(default="UTC", description="IANA time zone for cron, e.g. Europe/Berlin.")
    dispatch_type: Literal["goal", "task"] = Field(default="goal", description="goal or task.")
    goal: GoalTemplate | None = Field(default=None, description="The goal to submit (dispatchType goal).")
    task: TaskTemplate | None = Field(default=None, description="The task to submit (dispatchType task).")
    tenant: str = Field(default="default", max_length=128, description="Tenant the dispatches run for.")
    missed_fire_policy: Literal["skip", "fire_once"] = Field(
        default="skip",
        description="skip: drop fires missed while down; fire_once: fire one of them on start-up.",
    )
    starting_deadline_seconds: int | None = Field(
        default=None, ge=1, description="A missed fire older than this is never made up."
    )
    suspend: bool = Field(default=False, description="Stop firing without deleting the schedule.")

    @field_validator("cron", mode="before")
    @classmethod
    def _cron_fields(cls, value: Any) -> Any:
        """Count the fields first: a miscounted cron says so, not that it misses a pattern."""
        if isinstance(value, str) and not value.strip().startswith("@"):
            problem = cron_field_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter

            if not croniter.is_valid(value):
                raise ValueError(f"invalid cron expression {value!r}")
        return value

    _tz_valid = field_validator("timezone")(known_time_zone)

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleSpec:
        problems = []
        if (self.cron is None) == (self.interval_seconds is None):
            problems.append("set exactly one of cron or intervalSeconds")
        if self.dispatch_type == "goal" and self.goal is None:
            problems.append("dispatchType goal needs goal")
        if self.dispatch_type == "task" and self.task is None:
            problems.append("dispatchType task needs task")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def schedule_name(self) -> str:
        """The schedule name; set by the loader for manifests."""
        if not self.name:
            raise ValueError("schedule has no name (set spec.name or metadata.name)")
        return self.name
