"""One goal through the orchestrator: decompose, check, dispatch, collect, checkpoint, synthesize.

The goal's working state lives in its checkpoint record (key ``<orchestrator>.<goal_id>``).
After every result the record is updated; when the context — the plan plus the
results the synthesizer will read — passes ``token_threshold`` it is compressed
into an executive summary, written, and the session continues from the record
it reads back. A restarted orchestrator that receives the goal again loads the
same record: it does not decompose again, does not re-run finished subtasks,
and re-publishes the unfinished ones under their original ``Nats-Msg-Id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loom.api.worker import WorkerSpec
from loom.checkpoint import Checkpoint, CheckpointStore
from loom.clock import Clock
from loom.goal_delivery import heartbeat as keep_alive
from loom.llm.base import ChatRequest, Message, Provider, token_usage
from loom.llm.jsonextract import NoJSONFound, extract_json
from loom.llm.prompt import estimate_tokens
from loom.messages import (
    GoalMessage,
    GoalResult,
    StageRecord,
    TaskMessage,
    TaskResult,
    TaskStatus,
    TokenUsage,
)
from loom.orchestrator import decompose as dc
from loom.orchestrator.config import OrchestratorConfig
from loom.orchestrator.metrics import CHECKPOINTS, REJECTED_SUBTASKS, RESUMED_FROM_CHECKPOINT, SUBTASKS

if TYPE_CHECKING:
    from loom.bus import ResultSubscription, RoleBus

log = logging.getLogger(__name__)


@dataclass
class SessionState:
    """Everything a goal's orchestration knows; round-trips through a Checkpoint."""

    goal: GoalMessage
    started_at: float
    pending: dict[str, dc.Subtask] = field(default_factory=dict)
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    summary: str = ""
    context_lines: list[str] = field(default_factory=list)
    context_tokens: int = 0
    sequence: int = 0
    compactions: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    dispatched_at: dict[str, float] = field(default_factory=dict)
    interrupted: set[str] = field(default_factory=set)

    def to_checkpoint(self) -> Checkpoint:
        self.sequence += 1
        return Checkpoint(
            goal_id=self.goal.goal_id,
            sequence=self.sequence,
            executive_summary=self.summary,
            completed=[{"id": k, **v} for k, v in self.completed.items()],
            pending=[
                s.to_dict() | {"dispatched_at": self.dispatched_at.get(s.id)} for s in self.pending.values()
            ],
            decisions=self.decisions,
            context_tokens=self.context_tokens,
            data={
                "goal": self.goal.model_dump(mode="json"),
                "started_at": self.started_at,
                "rejected": self.rejected,
                "context_lines": self.context_lines,
                "compactions": self.compactions,
                "usage": self.usage.model_dump(),
            },
        )

    @classmethod
    def from_checkpoint(cls, cp: Checkpoint) -> SessionState:
        d = cp.data
        return cls(
            goal=GoalMessage.model_validate(d["goal"]),
            started_at=float(d["started_at"]),
            pending={p["id"]: dc.Subtask.from_dict(p) for p in cp.pending},
            completed={c["id"]: {k: v for k, v in c.items() if k != "id"} for c in cp.completed},
            rejected=list(d.get("rejected", [])),
            decisions=list(cp.decisions),
            summary=cp.executive_summary,
            context_lines=list(d.get("context_lines", [])),
            context_tokens=cp.context_tokens,
            sequence=cp.sequence,
            compactions=int(d.get("compactions", 0)),
            usage=TokenUsage.model_validate(d.get("usage", {})),
            dispatched_at={
                p["id"]: p["dispatched_at"] for p in cp.pending if p.get("dispatched_at") is not None
            },
        )


class GoalSession:
    """Runs goals for one orchestrator configuration."""

    def __init__(
        self,
        bus: RoleBus,
        config: OrchestratorConfig,
        catalog: dict[str, WorkerSpec],
        provider: Provider,
        store: CheckpointStore,
        *,
        clock: Clock = time.time,
    ):
        self.bus = bus
        self.config = config
        self.catalog = catalog
        self.provider = provider
        self.store = store
        self.clock = clock

    def key(self, goal_id: str) -> str:
        return f"{self.config.name}.{goal_id}"

    async def run(
        self,
        goal: GoalMessage,
        heartbeat: Callable[[], Awaitable[None]] | None = None,
        heartbeat_every: float = 10.0,
    ) -> GoalResult:
        """Run (or resume) a goal and publish its result."""
        key = self.key(goal.goal_id)
        async with keep_alive(heartbeat, heartbeat_every):
            sub = await self.bus.subscribe_results(goal.goal_id, goal.tenant)
            try:
                cp = await self.store.load(key)
                if cp is not None:
                    state = SessionState.from_checkpoint(cp)
                    state.interrupted = set(state.pending)
                    RESUMED_FROM_CHECKPOINT.labels(self.config.name).inc()
                    log.info(
                        "goal %s resumed from checkpoint #%d (%d done, %d pending)",
                        goal.goal_id,
                        cp.sequence,
                        len(state.completed),
                        len(state.pending),
                    )
                else:
                    state = SessionState(goal=goal, started_at=self.clock())
                    await self._decompose(state)
                    await self._save(state, "progress")
                state = await self._collect(state, sub)
                result = await self._finish(state)
            finally:
                await sub.close()
        await self.bus.publish_result(result)
        await self.store.delete(key)
        return result

    # -- decomposition ----------------------------------------------------------------------------

    async def _ask(
        self, state: SessionState, system: str, messages: list[Message], schema: dict[str, Any] | None
    ) -> str:
        response = await self.provider.complete(
            ChatRequest(
                messages=messages,
                system=system,
                response_schema=schema,
                max_tokens=self.config.decomposer.max_tokens,
            )
        )
        state.usage = state.usage + token_usage(response.usage)
        return response.text

    async def _decompose(self, state: SessionState) -> None:
        cfg = self.config.decomposer
        prompt = dc.decompose_prompt(state.goal, self.catalog, cfg.max_subtasks)
        messages = [Message(role="user", content=prompt)]
        check = dc.PlanCheck()
        for round_no in range(cfg.feedback_rounds + 1):
            reply = await self._ask(state, dc.DECOMPOSE_SYSTEM, messages, dc.PLAN_SCHEMA)
            check = dc.check_plan(reply, self.catalog, cfg.max_subtasks)
            if not check.rejected or round_no == cfg.feedback_rounds:
                break
            messages += [
                Message(role="assistant", content=reply),
                Message(role="user", content=dc.feedback_prompt(check.rejected)),
            ]
        for r in check.rejected:
            REJECTED_SUBTASKS.labels(self.config.name).inc()
            log.info("goal %s: subtask %d dropped: %s", state.goal.goal_id, r.index, r.reason)
        state.pending = {s.id: s for s in check.subtasks}
        state.rejected = [r.to_dict() for r in check.rejected]
        state.decisions = [
            *check.decisions,
            f"decomposed into {len(check.subtasks)} subtask(s): "
            + ", ".join(f"{s.id}->{s.worker_type}" for s in check.subtasks),
        ]
        state.context_tokens = estimate_tokens(prompt, *(m.content for m in messages[1:]))

    # -- dispatch and collection ------------------------------------------------------------------

    async def _publish(self, state: SessionState, subtask: dc.Subtask) -> None:
        goal = state.goal
        task = TaskMessage(
            task_id=f"{goal.goal_id}.{subtask.id}.{subtask.attempt}",
            parent_task_id=goal.goal_id,
            worker_type=subtask.worker_type,
            payload=subtask.payload,
            model_tier=subtask.tier,
            priority=goal.priority,
            request_id=goal.request_id,
            tenant=goal.tenant,
            metadata={"orchestrator": self.config.name, "subtask": subtask.id, "attempt": subtask.attempt},
        )
        state.dispatched_at.setdefault(subtask.id, self.clock())
        await self.bus.publish_task(task, msg_id=f"{goal.goal_id}/{subtask.id}/{subtask.attempt}")

    async def _collect(self, state: SessionState, sub: ResultSubscription) -> SessionState:
        timeouts = self.config.timeouts
        goal_deadline = state.started_at + timeouts.goal_seconds
        now = self.clock()
        deadlines: dict[str, float] = {}
        for s in list(state.pending.values()):
            await self._publish(state, s)
            deadlines[s.id] = now + timeouts.subtask_seconds
        while state.pending:
            now = self.clock()
            if now >= goal_deadline:
                for sid in list(state.pending):
                    self._settle(state, sid, "timeout", f"goal timed out after {timeouts.goal_seconds:g}s")
                break
            try:
                data = await sub.get(timeout=max(0.0, min(goal_deadline, *deadlines.values()) - now))
            except TimeoutError:
                now = self.clock()
                for sid, due in list(deadlines.items()):
                    if due > now:
                        continue
                    subtask = state.pending[sid]
                    if sid in state.interrupted:  # its result may have been lost while no one listened
                        state.interrupted.discard(sid)
                        subtask.attempt += 1
                        await self._publish(state, subtask)
                        deadlines[sid] = now + timeouts.subtask_seconds
                    else:
                        del deadlines[sid]
                        self._settle(state, sid, "timeout", f"timed out after {timeouts.subtask_seconds:g}s")
                await self._save(state, "progress")
                continue
            finished = self._apply(state, data)
            if finished is None:
                continue
            deadlines.pop(finished, None)
            if state.context_tokens > self.config.checkpoint.token_threshold:
                await self._compact(state)
                state = await self._read_back(state)
            else:
                await self._save(state, "progress")
        return state

    def _apply(self, state: SessionState, data: bytes) -> str | None:
        try:
            result = TaskResult.from_bytes(data)
        except ValidationError:
            return None
        prefix = state.goal.goal_id + "."
        if not result.task_id.startswith(prefix):
            return None
        sid = result.task_id[len(prefix) :].rpartition(".")[0]
        if sid not in state.pending:
            return None
        if result.status == TaskStatus.COMPLETED:
            body: Any = result.output or {}
            status = "completed"
        else:
            body = f"{result.error_code or 'failed'}: {result.error or ''}"
            status = "failed"
        state.usage = state.usage + result.token_usage
        state.context_tokens += estimate_tokens(self._settle(state, sid, status, body))
        return sid

    def _settle(self, state: SessionState, sid: str, status: str, body: Any) -> str:
        """Move a pending subtask to the completed ones (``body``: its output, or its error unless
        ``status`` is completed); returns its line of context."""
        subtask = state.pending.pop(sid)
        now = self.clock()
        completed = status == "completed"
        state.completed[sid] = {
            "worker_type": subtask.worker_type,
            "status": status,
            "output": body if completed else None,
            "error": None if completed else body,
            "attempts": subtask.attempt,
            "started_at": state.dispatched_at.get(sid, now),
            "finished_at": now,
        }
        SUBTASKS.labels(self.config.name, status).inc()
        line = dc.result_line(sid, subtask.worker_type, status, body)
        state.context_lines.append(line)
        return line

    # -- checkpoints ------------------------------------------------------------------------------

    async def _save(self, state: SessionState, kind: str) -> None:
        await self.store.save(self.key(state.goal.goal_id), state.to_checkpoint())
        CHECKPOINTS.labels(self.config.name, kind).inc()

    async def _compact(self, state: SessionState) -> None:
        """Fold the recent results into the executive summary and write the checkpoint."""
        state.summary = dc.executive_summary(
            state.goal, state.summary, state.context_lines, len(state.pending)
        )
        state.context_lines = []
        state.context_tokens = estimate_tokens(state.summary)
        state.compactions += 1
        state.decisions.append(
            f"checkpoint {state.compactions}: context compressed to {state.context_tokens} tokens"
        )
        await self._save(state, "compaction")

    async def _read_back(self, state: SessionState) -> SessionState:
        """Continue from what the store holds, not from memory."""
        cp = await self.store.load(self.key(state.goal.goal_id))
        if cp is None:
            raise RuntimeError(f"checkpoint of goal {state.goal.goal_id} vanished right after it was written")
        again = SessionState.from_checkpoint(cp)
        again.interrupted = state.interrupted & set(again.pending)
        again.dispatched_at = {**state.dispatched_at, **again.dispatched_at}
        return again

    # -- synthesis --------------------------------------------------------------------------------

    async def _finish(self, state: SessionState) -> GoalResult:
        results = {k: v["output"] for k, v in state.completed.items() if v["status"] == "completed"}
        failed = {k: str(v["error"]) for k, v in state.completed.items() if v["status"] != "completed"}
        error: str | None = None
        output: dict[str, Any] | None
        if not state.completed:
            reasons = "; ".join(r["reason"] for r in state.rejected) or "the plan was empty"
            error = f"no valid subtasks: {reasons}"
            output = dc.merge({}, {}, state.rejected)
        elif not results:
            error = "every subtask failed: " + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            output = dc.merge({}, failed, state.rejected)
        elif self.config.synthesis == "merge":
            output = dc.merge(results, failed, state.rejected)
        else:
            output = await self._synthesize(state, failed) | {
                "subtasks": dc.merge(results, failed, state.rejected)
            }
        now = self.clock()
        stages = [
            StageRecord(
                name=k,
                worker_type=v["worker_type"],
                status=v["status"],
                attempts=int(v.get("attempts", 1)),
                started_at=_dt(v.get("started_at")),
                finished_at=_dt(v.get("finished_at")),
                duration_ms=max(0.0, (v.get("finished_at", now) - v.get("started_at", now)) * 1000.0),
                error=v.get("error"),
            )
            for k, v in state.completed.items()
        ]
        return GoalResult(
            goal_id=state.goal.goal_id,
            status=TaskStatus.FAILED if error else TaskStatus.COMPLETED,
            output=output,
            error=error,
            stages=stages,
            token_usage=state.usage,
            processing_time_ms=(now - state.started_at) * 1000.0,
            tenant=state.goal.tenant,
            request_id=state.goal.request_id,
        )

    async def _synthesize(self, state: SessionState, failed: dict[str, str]) -> dict[str, Any]:
        prompt = dc.synthesize_prompt(state.goal, state.summary, state.context_lines, failed)
        text = await self._ask(state, dc.SYNTHESIZE_SYSTEM, [Message(role="user", content=prompt)], None)
        try:
            parsed = extract_json(text)
        except NoJSONFound:
            return {"answer": text.strip()}
        return parsed if isinstance(parsed, dict) else {"answer": parsed}


def _dt(ts: float | None) -> Any:
    from datetime import UTC, datetime

    return None if ts is None else datetime.fromtimestamp(ts, UTC)
