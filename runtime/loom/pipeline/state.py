"""In-flight goal state: stage outputs, attempts and timeline, and how it changes.

The state is the whole memory of a goal. It is written to NATS KV (bucket
``loom-pipeline-state``, key ``<pipeline>.<goal_id>``; or Redis/Valkey under
``loom:pipeline-state:``, the same interface as the orchestrator's checkpoints) before each stage task is
published and after each stage ends, so an orchestrator that dies mid-goal can be
replaced by any replica: the redelivered goal reads the state, keeps every stage
that already finished and re-publishes the ones that were in flight under the
same ``Nats-Msg-Id`` (JetStream drops the copy if the first is still queued).
A finished goal keeps its result in the state, so a redelivered or resubmitted
goal id gets the same result again without running anything.

Transitions are plain methods with the time passed in, so they are unit-tested
without a clock or a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loom.api.pipeline import STATE_STORE_URL_ENV, PipelineStateStore
from loom.messages import GoalMessage, GoalResult, StageRecord, TaskStatus, TokenUsage
from loom.pipeline.plan import TERMINAL, PipelinePlan
from loom.state_store import KeyValueStore, NatsKeyValueStore, open_key_value_store

if TYPE_CHECKING:
    from loom.bus import RoleBus

STATE_BUCKET = "loom-pipeline-state"
STATE_REDIS_PREFIX = "loom:pipeline-state:"
#: Finished goals keep their result this long (a resubmitted goal id gets it again); longer than any
#: pipeline timeout, so in-flight state never expires.
DEFAULT_STATE_TTL = 2 * 86400.0
#: Stage statuses that fail the goal.
FAILING: frozenset[str] = frozenset({"failed", "timeout"})


class StateStoreConfigError(ValueError):
    """The pipeline's state store is misconfigured (e.g. Redis chosen, no URL in the environment)."""


def state_store_url(
    configured: PipelineStateStore | None, flag: str | None, env: Mapping[str, str]
) -> str | None:
    """Where a pipeline process keeps goal states: None for the NATS bucket, else a Redis URL.

    The ``--state-store`` flag wins, then the Pipeline's ``stateStore``, then
    ``LOOM_PIPELINE_STATE_STORE``; ``nats`` (or nothing) means the NATS Key-Value bucket.
    """
    if flag:
        return None if flag == "nats" else flag
    if configured is None:
        value = env.get(STATE_STORE_URL_ENV, "")
        return None if value in ("", "nats") else value
    if configured.backend == "nats":
        return None
    url = env.get(configured.url_env, "")
    if not url:
        ref = configured.url_secret_ref
        where = f" (on a cluster it comes from Secret {ref.name!r}, key {ref.key!r})" if ref else ""
        raise StateStoreConfigError(
            f"the pipeline keeps its goal states in Redis, but {configured.url_env} is not set{where}"
        )
    return url


def state_key(pipeline: str, goal_id: str) -> str:
    """The KV key of a goal's state."""
    return f"{pipeline}.{goal_id}"


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class StageState(BaseModel):
    """One stage of one goal."""

    model_config = ConfigDict(extra="ignore")

    worker_type: str
    status: str = "pending"  # pending | running | completed | skipped | failed | timeout | cancelled
    attempts: int = 0
    #: Attempts that were in flight when an orchestrator stopped; they do not use up retries.
    interrupted: int = 0
    started_at: float | None = None
    attempt_started_at: float | None = None
    finished_at: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    model_used: str | None = None
    token_usage: TokenUsage = Field(default_factory=TokenUsage)

    def record(self, name: str) -> StageRecord:
        """The stage's timeline entry."""
        duration = 0.0
        if self.started_at is not None and self.finished_at is not None:
            duration = (self.finished_at - self.started_at) * 1000.0
        return StageRecord(
            name=name,
            worker_type=self.worker_type,
            status=self.status,
            started_at=_ts(self.started_at),
            finished_at=_ts(self.finished_at),
            duration_ms=duration,
            attempts=self.attempts,
            error=self.error,
        )


class GoalState(BaseModel):
    """Everything known about one goal of one pipeline."""

    model_config = ConfigDict(extra="ignore")

    pipeline: str
    goal: dict[str, Any]
    started_at: float
    stages: dict[str, StageState]
    status: Literal["running", "finished"] = "running"
    #: How many times a process picked this goal up (1 + restarts).
    runs: int = 1
    result: dict[str, Any] | None = None

    @classmethod
    def new(cls, plan: PipelinePlan, goal: GoalMessage, now: float) -> GoalState:
        """The state of a goal nobody has started yet."""
        return cls(
            pipeline=plan.name,
            goal=goal.model_dump(mode="json"),
            started_at=now,
            stages={name: StageState(worker_type=plan.stages[name].worker_type) for name in plan.order},
        )

    @property
    def goal_id(self) -> str:
        return str(self.goal["goal_id"])

    @property
    def key(self) -> str:
        return state_key(self.pipeline, self.goal_id)

    def statuses(self) -> dict[str, str]:
        """Stage name -> status."""
        return {name: s.status for name, s in self.stages.items()}

    def outputs(self) -> dict[str, Any]:
        """Outputs of completed stages by name (what ``resolve_path`` reads for ``<stage>.output.*``)."""
        return {name: s.output or {} for name, s in self.stages.items() if s.status == "completed"}

    def running(self) -> list[str]:
        return [name for name, s in self.stages.items() if s.status == "running"]

    def max_attempts(self, plan: PipelinePlan, name: str) -> int:
        """1 + retries, plus one for every attempt a restart interrupted."""
        return 1 + plan.stages[name].retries + self.stages[name].interrupted

    # -- transitions -------------------------------------------------------------------------

    def start_attempt(self, name: str, now: float) -> int:
        """Begin the next attempt of a stage; returns its number."""
        s = self.stages[name]
        s.status = "running"
        s.attempts += 1
        s.attempt_started_at = now
        if s.started_at is None:
            s.started_at = now
        s.error = None
        return s.attempts

    def complete(
        self,
        name: str,
        output: dict[str, Any],
        now: float,
        *,
        model_used: str | None = None,
        usage: TokenUsage | None = None,
    ) -> None:
        """A stage produced its output."""
        s = self.stages[name]
        s.status = "completed"
        s.output = output
        s.error = None
        s.finished_at = now
        s.model_used = model_used
        if usage is not None:
            s.token_usage = usage

    def attempt_failed(
        self,
        plan: PipelinePlan,
        name: str,
        error: str,
        now: float,
        *,
        retryable: bool = True,
        timed_out: bool = False,
    ) -> bool:
        """The current attempt failed or timed out. True when another attempt may start."""
        s = self.stages[name]
        s.error = error
        if retryable and s.attempts < self.max_attempts(plan, name):
            return True
        s.status = "timeout" if timed_out else "failed"
        s.finished_at = now
        return False

    def skip(self, name: str, reason: str, now: float) -> None:
        s = self.stages[name]
        s.status = "skipped"
        s.error = reason
        s.started_at = s.finished_at = now

    def fail(self, name: str, reason: str, now: float) -> None:
        """Fail a stage before it ran (e.g. its input could not be built)."""
        s = self.stages[name]
        s.status = "failed"
        s.error = reason
        if s.started_at is None:
            s.started_at = now
        s.finished_at = now

    def resume(self, now: float) -> list[str]:
        """After a restart: in-flight attempts get a fresh deadline and a free extra attempt.

        Returns the stages whose current attempt must be published again (under the same id).
        """
        self.runs += 1
        again = self.running()
        for name in again:
            s = self.stages[name]
            s.interrupted += 1
            s.attempt_started_at = now
        return again

    def cancel_unfinished(self, reason: str, now: float) -> None:
        """The goal ended early: stages not yet terminal are cancelled."""
        for s in self.stages.values():
            if s.status not in TERMINAL:
                s.status = "cancelled"
                s.error = reason
                s.finished_at = now

    def first_failure(self) -> tuple[str, StageState] | None:
        for name, s in self.stages.items():
            if s.status in FAILING:
                return name, s
        return None

    def all_terminal(self) -> bool:
        return all(s.status in TERMINAL for s in self.stages.values())

    def deadlines(self, plan: PipelinePlan) -> dict[str, float]:
        """When each running stage's current attempt times out."""
        return {
            name: (s.attempt_started_at or self.started_at) + plan.stages[name].timeout_seconds
            for name, s in self.stages.items()
            if s.status == "running"
        }

    def finish(self, now: float, *, error: str | None = None) -> GoalResult:
        """Close the goal: build its result and keep it in the state."""
        failure = self.first_failure()
        if error is None and failure is not None:
            name, s = failure
            error = f"stage {name!r} {s.status}: {s.error}"
        if error is not None:
            self.cancel_unfinished(f"not finished: {error}", now)
        usage = sum((s.token_usage for s in self.stages.values()), TokenUsage())
        result = GoalResult(
            goal_id=self.goal_id,
            status=TaskStatus.FAILED if error else TaskStatus.COMPLETED,
            output={n: s.output for n, s in self.stages.items() if s.status == "completed"},
            error=error,
            pipeline=self.pipeline,
            stages=[s.record(name) for name, s in self.stages.items()],
            token_usage=usage,
            processing_time_ms=(now - self.started_at) * 1000.0,
            tenant=str(self.goal.get("tenant", "default")),
            request_id=self.goal.get("request_id"),
        )
        self.status = "finished"
        self.result = result.model_dump(mode="json")
        return result

    def stored_result(self) -> GoalResult | None:
        """The result of a finished goal."""
        return None if self.result is None else GoalResult.model_validate(self.result)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> GoalState:
        return cls.model_validate_json(data)


class StateStore:
    """Goal states, one key per goal, in a :class:`~loom.state_store.KeyValueStore`."""

    def __init__(self, store: KeyValueStore):
        self._store = store

    @classmethod
    async def open(
        cls, bus: RoleBus, *, ttl: float | None = DEFAULT_STATE_TTL, url: str | None = None
    ) -> StateStore:
        """The bucket ``loom-pipeline-state`` on ``bus`` (created if needed), or Redis/Valkey when ``url``
        is a redis URL; entries expire after ``ttl`` seconds."""
        store = open_key_value_store(url, bus, bucket=STATE_BUCKET, prefix=STATE_REDIS_PREFIX, ttl=ttl)
        if isinstance(store, NatsKeyValueStore):
            await store.open()
        return cls(store)

    async def get(self, pipeline: str, goal_id: str) -> GoalState | None:
        data = await self._store.get(state_key(pipeline, goal_id))
        return None if data is None else GoalState.from_bytes(data)

    async def put(self, state: GoalState) -> None:
        await self._store.put(state.key, state.to_bytes())

    async def close(self) -> None:
        await self._store.close()
