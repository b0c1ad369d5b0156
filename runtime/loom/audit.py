"""The audit trail: one durable record per task and goal outcome (who ran what, on which model,
for how many tokens, with what outcome), in the JetStream stream ``LOOM_AUDIT``.

Who writes a record: the role that decides the outcome, so each outcome is written once.

* The **worker** writes task outcomes (completed, or failed for good): only it knows the
  model it used, the tokens it spent, the attempt and how long the work took.
* The **pipeline** writes goal outcomes: only it sees a goal end, with its summed usage.
* The **router** writes what never reaches a worker, or cannot be written by one: rate-limited
  tasks, malformed or unroutable ones, too-large ones, tasks no worker consumes, and
  ``max_deliveries`` (a worker killed on every delivery writes nothing).

A retry (a nak with backoff) is not an outcome; the trace shows each attempt.

Writing never blocks the task path: :meth:`AuditWriter.emit` appends to a bounded in-memory
buffer and returns; a background task stores what has gathered, the records of one tenant as one
message of JSON lines (one acknowledged publish for many records). A full buffer or a failed
store drops the record and counts it in ``loom_audit_dropped_total{reason}``. A closing process
gets a few seconds to flush.

Submitters: the NATS user (``loom submit``), the MCP client or the schedule, as the
submitting process states it in the trace baggage (:data:`loom.tracing.SUBMITTER`).
Cost: a task record carries the cost of its usage at the answering tier's price
(:func:`loom.costs.cost`, the rule the router's budgets use) when the tier has one; a goal record
has none (its stages ran on tiers of different prices: sum its task records).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import csv
import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from loom import metrics, tracing
from loom.api.router_policy import TierPrice
from loom.costs import cost
from loom.messages import (
    DeadLetter,
    DeadLetterReason,
    GoalResult,
    Message,
    TaskResult,
    TaskStatus,
    TokenUsage,
    new_id,
    utcnow,
)
from loom.subjects import AUDIT_PREFIX, DEFAULT_TENANT, GOALS_PREFIX

if TYPE_CHECKING:
    from loom.bus import RoleBus

log = logging.getLogger(__name__)

AUDIT_ENV = "LOOM_AUDIT"
AUDIT_PAYLOADS_ENV = "LOOM_AUDIT_PAYLOADS"
AUDIT_MAX_AGE_ENV = "LOOM_AUDIT_MAX_AGE_SECONDS"
AUDIT_BUFFER_ENV = "LOOM_AUDIT_BUFFER"
#: Retention of a new audit stream when ``LOOM_AUDIT_MAX_AGE_SECONDS`` is unset: 90 days.
DEFAULT_MAX_AGE = 90 * 24 * 3600.0
#: Records taken from the buffer per round, and the largest message of records (JSON lines) stored.
_ROUND = 1024
_MESSAGE_BYTES = 256 * 1024

Outcome = Literal["completed", "failed", "rate_limited", "dead_lettered"]
OUTCOMES: tuple[str, ...] = ("completed", "failed", "rate_limited", "dead_lettered")

RECORDS = metrics.counter("loom_audit_records_total", "Audit records stored.", ["kind"])
DROPPED = metrics.counter(
    "loom_audit_dropped_total",
    "Audit records not stored: buffer_full, publish_failed or shutdown.",
    ["reason"],
)


class AuditRecord(Message):
    """One task or goal outcome."""

    record_id: str = Field(default_factory=new_id)
    at: datetime = Field(default_factory=utcnow)
    kind: Literal["task", "goal"]
    outcome: Outcome
    error_kind: str | None = None
    tenant: str = "default"
    worker_type: str | None = None
    pipeline: str | None = None
    tier: str | None = None
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: float | None = None
    duration_ms: float = 0.0
    attempt: int | None = None
    task_id: str | None = None
    goal_id: str | None = None
    trace_id: str | None = None
    submitter: str | None = None
    #: The role that wrote the record (worker, pipeline, router).
    role: str
    #: The task's payload and output, only with ``LOOM_AUDIT_PAYLOADS=true``.
    payload: dict[str, Any] | None = None
    output: dict[str, Any] | None = None


def task_outcome(status: TaskStatus, error_code: str | None, role: str) -> Outcome:
    """A task result's outcome: a worker's failure is ``failed``; the router's refusals are
    ``rate_limited`` or ``dead_lettered`` (the task never ran to an answer)."""
    if status == TaskStatus.COMPLETED:
        return "completed"
    if error_code == "rate_limited":
        return "rate_limited"
    return "failed" if role == "worker" else "dead_lettered"


def _usage(u: TokenUsage) -> dict[str, int]:
    return {
        "tokens_in": u.prompt_tokens,
        "tokens_out": u.completion_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
    }


def task_record(
    result: TaskResult,
    role: str,
    *,
    payload: dict[str, Any] | None = None,
    with_payloads: bool = False,
    price: TierPrice | None = None,
) -> AuditRecord:
    """The record of a task's final result (the one its caller receives); ``price`` is the
    answering tier's, for the record's cost."""
    meta = result.metadata or {}
    return AuditRecord(
        kind="task",
        outcome=task_outcome(result.status, result.error_code, role),
        error_kind=result.error_code if result.status != TaskStatus.COMPLETED else None,
        tenant=result.tenant,
        worker_type=result.worker_type,
        pipeline=meta.get("pipeline") if isinstance(meta.get("pipeline"), str) else None,
        tier=result.model_tier,
        model=result.model_used,
        duration_ms=result.processing_time_ms,
        attempt=result.attempt,
        task_id=result.task_id,
        goal_id=result.parent_task_id,
        trace_id=result.trace_id or tracing.current_trace_id(),
        submitter=tracing.submitter(),
        role=role,
        payload=payload if with_payloads else None,
        output=result.output if with_payloads else None,
        cost=cost(price, result.token_usage) if price is not None else None,
        **_usage(result.token_usage),
    )


def dead_letter_record(dl: DeadLetter) -> AuditRecord:
    """The record of work dead-lettered before any worker answered it (by the router, or a
    worker that could not read the task)."""
    return AuditRecord(
        kind="goal" if (dl.goal_id and not dl.task_id) or dl.subject.startswith(GOALS_PREFIX) else "task",
        outcome="rate_limited" if dl.reason == DeadLetterReason.RATE_LIMITED else "dead_lettered",
        error_kind=dl.reason.value,
        tenant=dl.tenant or DEFAULT_TENANT,
        worker_type=dl.worker_type,
        tier=dl.model_tier,
        attempt=dl.deliveries,
        task_id=dl.task_id,
        goal_id=dl.goal_id,
        trace_id=dl.trace_id or tracing.current_trace_id(),
        submitter=tracing.submitter(),
        role=dl.source or "router",
    )


def goal_record(result: GoalResult, *, role: str = "pipeline", with_payloads: bool = False) -> AuditRecord:
    """The record of a finished goal (written by its pipeline, or the goal orchestrator)."""
    failed = next((s for s in result.stages if s.status in ("failed", "timeout")), None)
    return AuditRecord(
        kind="goal",
        outcome="completed" if result.status == TaskStatus.COMPLETED else "failed",
        error_kind=(failed.status if failed else "failed") if result.status != TaskStatus.COMPLETED else None,
        tenant=result.tenant,
        pipeline=result.pipeline,
        duration_ms=result.processing_time_ms,
        goal_id=result.goal_id,
        trace_id=result.trace_id or tracing.current_trace_id(),
        submitter=tracing.submitter(),
        role=role,
        output=result.output if with_payloads else None,
        **_usage(result.token_usage),
    )


@dataclass(frozen=True)
class AuditSettings:
    """``LOOM_AUDIT`` (on unless ``off``/``false``/``0``), ``LOOM_AUDIT_PAYLOADS`` (off unless ``true``),
    ``LOOM_AUDIT_MAX_AGE_SECONDS`` (retention; unset: 90 days for a new stream, an existing one keeps
    its own) and ``LOOM_AUDIT_BUFFER`` (records held while the stream is slow; default 10000)."""

    enabled: bool = True
    payloads: bool = False
    max_age: float | None = None
    buffer: int = 10_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuditSettings:
        e = os.environ if env is None else env
        max_age = e.get(AUDIT_MAX_AGE_ENV, "").strip()
        buffer = e.get(AUDIT_BUFFER_ENV, "").strip()
        try:
            age = float(max_age) if max_age else None
            size = int(buffer) if buffer else 10_000
        except ValueError as exc:
            raise ValueError(f"{AUDIT_MAX_AGE_ENV} / {AUDIT_BUFFER_ENV}: not a number ({exc})") from None
        if (age is not None and age <= 0) or size < 1:
            raise ValueError(f"{AUDIT_MAX_AGE_ENV} must be > 0 and {AUDIT_BUFFER_ENV} >= 1")
        return cls(
            enabled=e.get(AUDIT_ENV, "on").strip().lower() not in ("off", "false", "0", "no"),
            payloads=e.get(AUDIT_PAYLOADS_ENV, "").strip().lower() in ("true", "1", "yes", "on"),
            max_age=age,
            buffer=size,
        )


@dataclass(frozen=True)
class Packed:
    """Records of one tenant stored as one message: JSON lines, oldest first."""

    subject: str
    body: bytes
    msg_id: str
    records: tuple[AuditRecord, ...]


def pack(records: Iterable[AuditRecord], max_bytes: int = _MESSAGE_BYTES) -> list[Packed]:
    """Records as few messages as possible: one subject per tenant (``loom.audit.<tenant>``), at most
    ``max_bytes`` a message (a larger record goes alone). One acknowledged publish then stores
    many records, which keeps the writer's cost per record small."""
    by_tenant: dict[str, list[tuple[AuditRecord, bytes]]] = {}
    for r in records:
        by_tenant.setdefault(r.tenant, []).append((r, r.to_bytes()))
    out: list[Packed] = []
    for tenant, items in by_tenant.items():
        chunk: list[tuple[AuditRecord, bytes]] = []
        size = 0
        for item in [*items, None]:
            if chunk and (item is None or size + len(item[1]) + 1 > max_bytes):
                out.append(
                    Packed(
                        f"{AUDIT_PREFIX}.{tenant}",
                        b"\n".join(b for _, b in chunk),
                        f"{chunk[0][0].record_id}+{len(chunk)}",
                        tuple(r for r, _ in chunk),
                    )
                )
                chunk, size = [], 0
            if item is not None:
                chunk.append(item)
                size += len(item[1]) + 1
    return out


def unpack(body: bytes) -> list[AuditRecord]:
    """The records of one stored message (ValueError when one is unreadable)."""
    return [AuditRecord.model_validate_json(line) for line in body.splitlines() if line.strip()]


class AuditWriter:
    """Stores audit records in the background; :meth:`emit` never waits."""

    def __init__(self, bus: RoleBus, settings: AuditSettings | None = None):
        self.bus = bus
        self.settings = settings or AuditSettings.from_env()
        self._queue: deque[AuditRecord] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stream_ready = False

    @property
    def payloads(self) -> bool:
        """Whether records carry payloads and outputs."""
        return self.settings.payloads

    def emit(self, record: AuditRecord | Callable[[], AuditRecord]) -> None:
        """Queue ``record`` for storing; dropped (and counted) when the buffer is full. A callable
        is called only when writing is on (an unwritten record costs nothing to build)."""
        if not self.settings.enabled:
            return
        if len(self._queue) >= self.settings.buffer:
            DROPPED.labels("buffer_full").inc()
            return
        self._queue.append(record if isinstance(record, AuditRecord) else record())
        self._idle.clear()
        if self._task is None:
            # A fresh context: the writer's own publishes belong to no task's trace.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="audit-writer", context=contextvars.Context()
            )
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._stream_ready:
                try:
                    await self.bus.ensure_audit_stream(
                        self.settings.max_age or DEFAULT_MAX_AGE, self.settings.max_age is not None
                    )
                    self._stream_ready = True
                except Exception as exc:  # stored records need the stream; the publish below says why
                    log.warning("cannot declare the audit stream: %s", exc)
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), _ROUND))]
            messages = pack(batch)
            done = await asyncio.gather(*(self._store(m) for m in messages), return_exceptions=True)
            failed = [d for d in done if isinstance(d, BaseException)]
            for m, d in zip(messages, done, strict=True):
                for r in m.records:
                    if isinstance(d, BaseException):
                        DROPPED.labels("publish_failed").inc()
                    else:
                        RECORDS.labels(r.kind).inc()
            if failed:
                log.warning("audit records not stored (%d messages): %s", len(failed), failed[0])

    async def _store(self, message: Packed) -> None:
        await self.bus.js_publish(message.subject, message.body, msg_id=message.msg_id)

    async def close(self, grace: float = 5.0) -> None:
        """Store what is buffered (up to ``grace`` seconds), then stop; the rest is counted as dropped."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._queue:
            DROPPED.labels("shutdown").inc(len(self._queue))
            log.warning("%d audit records dropped at shutdown", len(self._queue))
            self._queue.clear()


# -- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    """What ``loom audit`` selects; every field left None matches everything."""

    tenant: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    outcome: str | None = None
    worker_type: str | None = None
    pipeline: str | None = None
    kind: str | None = None

    def matches(self, r: AuditRecord) -> bool:
        """Whether ``r`` passes every given condition."""
        return (
            (self.tenant is None or r.tenant == self.tenant)
            and (self.since is None or r.at >= self.since)
            and (self.until is None or r.at < self.until)
            and (self.outcome is None or r.outcome == self.outcome)
            and (self.worker_type is None or r.worker_type == self.worker_type)
            and (self.pipeline is None or r.pipeline == self.pipeline)
            and (self.kind is None or r.kind == self.kind)
        )


#: Columns of the CSV export, in order (payloads are left out of CSV).
CSV_COLUMNS = (
    "at", "kind", "outcome", "error_kind", "tenant", "worker_type", "pipeline", "tier", "model",
    "tokens_in", "tokens_out", "cache_read_tokens", "cache_write_tokens", "cost", "duration_ms",
    "attempt", "task_id", "goal_id", "trace_id", "submitter", "role", "record_id",
)  # fmt: skip


def to_csv(records: Iterable[AuditRecord]) -> str:
    """Records as CSV with a header row."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        doc = r.model_dump(mode="json")
        w.writerow(["" if doc.get(c) is None else doc[c] for c in CSV_COLUMNS])
    return out.getvalue()
