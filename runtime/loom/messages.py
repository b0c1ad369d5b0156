"""Typed messages on the bus, with the original Loom's field names plus ``tenant``.

Messages travel as JSON. Unknown fields are ignored on input so newer senders
do not break older readers; a message that fails validation is a dead letter
(reason ``malformed``), never silently dropped.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loom.subjects import task_id_problem, token_problem


def new_id() -> str:
    """A fresh message id."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Timezone-aware now (UTC)."""
    return datetime.now(UTC)


class Priority(IntEnum):
    """Higher runs first when tasks wait for capacity."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class TaskStatus(StrEnum):
    """Outcome of a task."""

    COMPLETED = "completed"
    FAILED = "failed"


class Message(BaseModel):
    """Base: JSON in and out, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_bytes(self) -> bytes:
        """Serialise for the wire."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Any:
        """Parse from the wire; raises pydantic.ValidationError on a malformed message."""
        return cls.model_validate_json(data)


def stamp_tenant(data: bytes, tenant: str) -> bytes:
    """A task or goal body whose ``tenant`` is ``tenant``: unchanged when it already says so, else
    rewritten (other fields as sent). The tenant comes from the subject, never the payload."""
    doc = json.loads(data)
    if doc.get("tenant", "default") == tenant:
        return data
    doc["tenant"] = tenant
    return json.dumps(doc, separators=(",", ":")).encode()


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """One line naming each broken field and why: for dead-letter details and CLI errors."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _parse_priority(value: Any) -> Any:
    if isinstance(value, str) and not value.isdigit():
        try:
            return Priority[value.upper()]
        except KeyError:
            raise ValueError(
                f"priority must be one of {', '.join(p.name.lower() for p in Priority)}"
            ) from None
    return value


def _token(what: str) -> Any:
    """A field validator: the value becomes a subject token (see :func:`loom.subjects.token_problem`)."""

    def check(value: Any) -> Any:
        if value is not None and (problem := token_problem(value, what)) is not None:
            raise ValueError(problem)
        return value

    return check


class TaskMessage(Message):
    """A unit of work for one worker type."""

    task_id: str = Field(default_factory=new_id, min_length=1)
    parent_task_id: str | None = None
    worker_type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    model_tier: str | None = None
    priority: Priority = Priority.NORMAL
    request_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tenant: str = Field(default="default", min_length=1, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)

    _normalise_priority = field_validator("priority", mode="before")(_parse_priority)
    _worker_type_token = field_validator("worker_type")(_token("worker_type"))
    _tenant_token = field_validator("tenant")(_token("tenant"))
    _tier_token = field_validator("model_tier")(_token("model_tier"))

    @model_validator(mode="after")
    def _ids_fit_subjects(self) -> TaskMessage:
        problem = task_id_problem(self.task_id, self.parent_task_id)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def result_key(self) -> str:
        """The id results are published under: ``loom.results.<parent_task_id or task_id>``."""
        return self.parent_task_id or self.task_id


class TokenUsage(BaseModel):
    """Tokens a task's model calls consumed, cached input apart from fresh input.

    ``prompt_tokens`` are input tokens processed at the full rate. Input served from the
    provider's prompt cache is counted only in ``cache_read_tokens``, input written to it only
    in ``cache_write_tokens`` (Anthropic bills both apart; OpenAI-compatible servers only read),
    so a cached token is never counted as a fresh one. Results without the cache fields (older
    workers) read as uncached.
    """

    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        """Every input token the model read: fresh, read from the cache and written to it."""
        return self.prompt_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        """Every token: all input (cached included) plus completion."""
        return self.input_tokens + self.completion_tokens

    @property
    def limited_tokens(self) -> int:
        """The tokens a tokens-per-minute limit counts: fresh input, cache writes and output.
        Cache reads are left out, as Anthropic leaves them out of its input-tokens-per-minute limit."""
        return self.prompt_tokens + self.cache_write_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )


class TaskResult(Message):
    """What a worker made of a task."""

    task_id: str
    parent_task_id: str | None = None
    worker_type: str
    status: TaskStatus
    output: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    model_used: str | None = None
    model_tier: str | None = None
    token_usage: TokenUsage = Field(default_factory=TokenUsage)
    processing_time_ms: float = 0.0
    attempt: int = 1
    tenant: str = "default"
    request_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    completed_at: datetime = Field(default_factory=utcnow)
    #: The W3C trace id of the task's trace (hex), when it has one.
    trace_id: str | None = None

    @property
    def result_key(self) -> str:
        """The id this result is published under."""
        return self.parent_task_id or self.task_id


class GoalMessage(Message):
    """A goal for a pipeline (``loom.goals.<pipeline>``) or the orchestrator (``loom.goals.incoming``)."""

    goal_id: str = Field(default_factory=new_id)
    instruction: str = ""
    context: dict[str, Any] = Field(default_factory=dict)
    pipeline: str | None = None
    priority: Priority = Priority.NORMAL
    request_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tenant: str = Field(default="default", min_length=1, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)

    _normalise_priority = field_validator("priority", mode="before")(_parse_priority)
    _goal_id_token = field_validator("goal_id")(_token("goal_id"))
    _tenant_token = field_validator("tenant")(_token("tenant"))
    _pipeline_token = field_validator("pipeline")(_token("pipeline"))


class StageRecord(BaseModel):
    """One stage's entry in a goal result's timeline."""

    name: str
    worker_type: str
    status: str  # completed | failed | skipped | timeout
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float = 0.0
    attempts: int = 0
    error: str | None = None


class GoalResult(Message):
    """A finished goal: final output and the per-stage timeline."""

    goal_id: str
    status: TaskStatus
    output: dict[str, Any] | None = None
    error: str | None = None
    pipeline: str | None = None
    stages: list[StageRecord] = Field(default_factory=list)
    token_usage: TokenUsage = Field(default_factory=TokenUsage)
    processing_time_ms: float = 0.0
    tenant: str = "default"
    request_id: str | None = None
    completed_at: datetime = Field(default_factory=utcnow)
    #: The W3C trace id of the goal's trace (hex), when it has one.
    trace_id: str | None = None


class DeadLetterReason(StrEnum):
    """Why a message could not be done. Bounded: used as a metric label."""

    MALFORMED = "malformed"
    UNKNOWN_WORKER_TYPE = "unknown_worker_type"
    UNKNOWN_TIER = "unknown_tier"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXHAUSTED = "budget_exhausted"
    INVALID_INPUT = "invalid_input"
    INVALID_OUTPUT = "invalid_output"
    NO_WORKER = "no_worker"
    TASK_FAILED = "task_failed"
    MAX_DELIVERIES = "max_deliveries"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"


class DeadLetter(Message):
    """A message that cannot be done, with its reason and the original bytes (for replay)."""

    dead_letter_id: str = Field(default_factory=new_id)
    reason: DeadLetterReason
    detail: str = ""
    subject: str
    original: str = Field(
        description="The original message body (UTF-8, or base64 when prefixed 'b64:'); empty for "
        "too_large, whose body is not kept."
    )
    task_id: str | None = None
    goal_id: str | None = None  # set when the original is a goal
    worker_type: str | None = None
    model_tier: str | None = None
    tenant: str | None = None
    deliveries: int | None = None
    source: str = ""  # which role produced it (router, worker, advisory)
    at: datetime = Field(default_factory=utcnow)
    #: The W3C trace id of the failed work's trace (hex), when it has one.
    trace_id: str | None = None

    @property
    def replayable(self) -> bool:
        """Whether the original body was kept (a ``too_large`` one is not), so a replay can send it."""
        return not (self.reason == DeadLetterReason.TOO_LARGE and not self.original)
