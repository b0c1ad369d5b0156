"""Runs one goal of a pipeline to its end: dispatch ready stages, collect results, retry, time out.

The runner subscribes to ``loom.results.<goal_id>`` before it publishes any
stage task, so no result is missed however fast a worker is. Stage tasks carry
``parent_task_id = goal_id`` (every stage's result comes back on that one
subject) and a task id ``<goal_id>.<stage>.<attempt>`` that identifies the stage
and attempt of a result, also after a restart. The first completed result of
any attempt wins; results of stages already ended are ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loom import goal_metrics as metrics
from loom import tracing
from loom.audit import goal_record
from loom.clock import Clock
from loom.goal_delivery import heartbeat as keep_alive
from loom.messages import GoalMessage, GoalResult, TaskMessage, TaskResult, TaskStatus
from loom.pipeline.plan import PipelinePlan, parse_stage_task_id, stage_msg_id, stage_task_id
from loom.pipeline.state import GoalState, StateStore

if TYPE_CHECKING:
    from loom.bus import ResultSubscription, RoleBus

log = logging.getLogger(__name__)
#: How often a goal waiting for stage results checks whether the connection moved to another server.
_CONNECTION_CHECK = 1.0

#: Error codes of failed stage results that no retry can fix.
NON_RETRYABLE_CODES = frozenset(
    {"invalid_input", "out_of_scope", "malformed", "unknown_worker_type", "unknown_tier", "rate_limited"}
)


class GoalRunner:
    """Drives goals of one pipeline; one instance serves every goal of a process."""

    def __init__(self, bus: RoleBus, plan: PipelinePlan, store: StateStore, *, clock: Clock = time.time):
        self.bus = bus
        self.plan = plan
        self.store = store
        self.clock = clock
        self._labels = (plan.name,)
        #: The open span of each running stage: (goal id, stage) -> (attempt, span).
        self._spans: dict[tuple[str, str], tuple[int, Any]] = {}

    async def run(
        self,
        goal: GoalMessage,
        heartbeat: Callable[[], Awaitable[None]] | None = None,
        heartbeat_every: float = 10.0,
    ) -> GoalResult:
        """Run ``goal`` (or resume it from stored state) and publish its result."""
        state = await self.store.get(self.plan.name, goal.goal_id)
        if state is not None and state.status == "finished":
            stored = state.stored_result()
            assert stored is not None
            metrics.GOALS_REPLAYED.labels(*self._labels).inc()
            await self.bus.publish_result(stored)
            return stored
        metrics.GOALS_RECEIVED.labels(*self._labels).inc()
        in_flight = metrics.GOALS_IN_FLIGHT.labels(*self._labels)
        in_flight.inc()
        try:
            async with keep_alive(heartbeat, heartbeat_every):
                sub = await self.bus.subscribe_results(goal.goal_id, goal.tenant)
                try:
                    resumed: list[str] = []
                    if state is None:
                        state = GoalState.new(self.plan, goal, self.clock())
                    else:
                        resumed = state.resume(self.clock())
                        metrics.GOALS_RESUMED.labels(*self._labels).inc()
                        log.info(
                            "goal %s resumed (run %d), re-publishing %s",
                            goal.goal_id,
                            state.runs,
                            resumed or "nothing",
                        )
                    result = await self._drive(state, sub, resumed)
                finally:
                    await sub.close()
                    self._end_spans(goal.goal_id)
        finally:
            in_flight.dec()
        await self.store.put(state)
        await self.bus.publish_result(result)
        self.bus.audit.emit(goal_record(result, with_payloads=self.bus.audit.payloads))
        outcome = "completed" if result.status == TaskStatus.COMPLETED else "failed"
        metrics.GOALS_COMPLETED.labels(self.plan.name, outcome).inc()
        metrics.GOAL_DURATION.labels(*self._labels).observe(
            result.processing_time_ms / 1000.0, tracing.exemplar()
        )
        return result

    async def _drive(self, state: GoalState, sub: ResultSubscription, resumed: list[str]) -> GoalResult:
        plan = self.plan
        goal_deadline = state.started_at + plan.spec.timeout_seconds
        outbox: list[tuple[str, int]] = [(name, state.stages[name].attempts) for name in resumed]
        dirty = False
        epoch, reconnects = self.bus.epoch, 0
        while True:
            if self.bus.epoch != epoch:
                # Results are core NATS: one sent while this process was between servers is lost.
                # Ask again for the stages still running (a new message id, so it is not dropped as
                # a duplicate); the first result of either wins.
                epoch, reconnects = self.bus.epoch, reconnects + 1
                again = [(name, state.stages[name].attempts) for name in state.running()]
                if again:
                    log.warning(
                        "goal %s: reconnected to NATS; re-sending %s", state.goal_id, [n for n, _ in again]
                    )
                    await self._publish(state, again, resend=reconnects)
            now = self.clock()
            if now >= goal_deadline:
                for name in state.running():
                    state.attempt_failed(
                        plan, name, "pipeline timed out", now, retryable=False, timed_out=True
                    )
                    self._stage_ended(state, name)
                return self._finish(state, now, f"pipeline timed out after {plan.spec.timeout_seconds:g}s")
            self._start_ready(state, now, outbox)
            if state.first_failure() is not None or state.all_terminal():
                return self._finish(state, now)
            if outbox or dirty:
                # The state is stored before its tasks are published: a restart re-publishes them.
                await self.store.put(state)
                dirty = False
            if outbox:
                await self._publish(state, outbox)
                outbox.clear()
            wait_until = min([goal_deadline, *state.deadlines(plan).values()])
            try:
                data = await sub.get(timeout=max(0.0, min(wait_until - self.clock(), _CONNECTION_CHECK)))
            except TimeoutError:
                if self.clock() >= wait_until:
                    self._expire(state, self.clock(), outbox)
                    dirty = True
                continue
            dirty = self._on_result(state, data, self.clock(), outbox) or dirty

    def _start_ready(self, state: GoalState, now: float, outbox: list[tuple[str, int]]) -> None:
        """Gate and start every ready stage; skips can make more stages ready, so loop."""
        progressed = True
        while progressed and state.first_failure() is None:
            progressed = False
            statuses = state.statuses()
            for name in self.plan.ready(statuses):
                gate = self.plan.gate(name, state.goal, state.outputs(), statuses)
                if gate.action == "run":
                    outbox.append((name, state.start_attempt(name, now)))
                elif gate.action == "skip":
                    state.skip(name, gate.reason, now)
                    self._stage_ended(state, name)
                else:
                    state.fail(name, gate.reason, now)
                    self._stage_ended(state, name)
                progressed = True

    async def _publish(self, state: GoalState, outbox: list[tuple[str, int]], *, resend: int = 0) -> None:
        goal = state.goal
        outputs = state.outputs()
        statuses = state.statuses()
        for name, attempt in outbox:
            stage = self.plan.stages[name]
            gate = self.plan.gate(name, goal, outputs, statuses)
            if gate.payload is None:  # the inputs were there when the stage started; they cannot vanish
                raise RuntimeError(f"stage {name!r} lost its input: {gate.reason}")
            task = TaskMessage(
                task_id=stage_task_id(state.goal_id, name, attempt),
                parent_task_id=state.goal_id,
                worker_type=stage.worker_type,
                payload=gate.payload,
                model_tier=stage.tier,
                priority=goal.get("priority", 1),
                request_id=goal.get("request_id"),
                tenant=goal.get("tenant", "default"),
                metadata={"pipeline": self.plan.name, "stage": name, "attempt": attempt},
            )
            msg_id = stage_msg_id(state.goal_id, name, attempt)
            with tracing.use(self._stage_span(state.goal_id, name, attempt, stage.worker_type)):
                await self.bus.publish_task(task, msg_id=f"{msg_id}/resend-{resend}" if resend else msg_id)

    def _stage_span(self, goal_id: str, name: str, attempt: int, worker_type: str) -> Any:
        """The span of a stage attempt (a resend keeps it; a new attempt ends the one before)."""
        key = (goal_id, name)
        open_span = self._spans.get(key)
        if open_span is not None and open_span[0] == attempt:
            return open_span[1]
        if open_span is not None:
            open_span[1].end()
        attrs = {"loom.stage": name, "loom.attempt": attempt, "loom.worker_type": worker_type}
        span = tracing.start(f"stage {name}", attributes=attrs)
        self._spans[key] = (attempt, span)
        return span

    def _end_spans(self, goal_id: str) -> None:
        """End the spans of a goal's stages still open (the goal ended or its run stopped)."""
        for key in [k for k in self._spans if k[0] == goal_id]:
            self._spans.pop(key)[1].end()

    def _on_result(self, state: GoalState, data: bytes, now: float, outbox: list[tuple[str, int]]) -> bool:
        """Apply one message from the result subject; True when the state changed."""
        try:
            result = TaskResult.from_bytes(data)
        except ValidationError:
            return False  # the goal's own GoalResult, or something that is not a stage result
        parsed = parse_stage_task_id(state.goal_id, result.task_id)
        if parsed is None or parsed[0] not in state.stages:
            return False
        name, attempt = parsed
        if state.stages[name].status != "running":
            return False
        if result.status == TaskStatus.COMPLETED:
            state.complete(
                name, result.output or {}, now, model_used=result.model_used, usage=result.token_usage
            )
            self._stage_ended(state, name)
            return True
        if attempt != state.stages[name].attempts:
            return False  # an older attempt failed late; the current one is still running
        code = result.error_code or ""
        error = f"{code or 'failed'}: {result.error or 'stage failed'}"
        self._failed_attempt(state, name, error, now, outbox, retryable=code not in NON_RETRYABLE_CODES)
        return True

    def _expire(self, state: GoalState, now: float, outbox: list[tuple[str, int]]) -> None:
        for name, deadline in state.deadlines(self.plan).items():
            if deadline <= now:
                timeout = self.plan.stages[name].timeout_seconds
                error = f"attempt timed out after {timeout:g}s"
                self._failed_attempt(state, name, error, now, outbox, retryable=True, timed_out=True)

    def _failed_attempt(
        self,
        state: GoalState,
        name: str,
        error: str,
        now: float,
        outbox: list[tuple[str, int]],
        *,
        retryable: bool,
        timed_out: bool = False,
    ) -> None:
        if state.attempt_failed(self.plan, name, error, now, retryable=retryable, timed_out=timed_out):
            metrics.STAGE_RETRIES.labels(self.plan.name, name).inc()
            outbox.append((name, state.start_attempt(name, now)))
        else:
            self._stage_ended(state, name)

    def _stage_ended(self, state: GoalState, name: str) -> None:
        s = state.stages[name]
        open_span = self._spans.pop((state.goal_id, name), None)
        if open_span is not None:
            span = open_span[1]
            span.set_attribute("loom.stage.status", s.status)
            if s.status in ("failed", "timeout"):
                tracing.fail(s.error or s.status, s.status, span)
            span.end()
        metrics.STAGES_FINISHED.labels(self.plan.name, name, s.status).inc()
        if s.status != "skipped" and s.started_at is not None and s.finished_at is not None:
            metrics.STAGE_DURATION.labels(self.plan.name, name).observe(s.finished_at - s.started_at)

    def _finish(self, state: GoalState, now: float, error: str | None = None) -> GoalResult:
        result = state.finish(now, error=error)
        for name, s in state.stages.items():
            if s.status == "cancelled":
                metrics.STAGES_FINISHED.labels(self.plan.name, name, "cancelled").inc()
        return result
