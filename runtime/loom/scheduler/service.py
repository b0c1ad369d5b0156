"""``loom scheduler``: fires schedules, one dispatch per slot however many replicas run.

Every replica computes the same slots (see :mod:`loom.scheduler.plan`) and
publishes each fire with ``Nats-Msg-Id: <schedule>/<fire time>``; JetStream's
duplicate window keeps the first and drops the rest. The goal or task id is
derived from the same string, so even a copy arriving after the window is the
same goal (a pipeline answers a finished goal id from its stored result).

The last slot handled per schedule is kept in the KV bucket ``loom-schedules``;
a scheduler that starts after a pause reads it and applies the missed-fire
policy to the slots in between. Time comes from an injected :class:`Clock`, so
tests step through hours of schedule without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from loom import tracing
from loom.api.loader import LoadError, load_paths
from loom.api.schedule import ScheduleSpec
from loom.bus import Bus, kv_get
from loom.messages import GoalMessage, TaskMessage
from loom.metrics import counter, gauge
from loom.scheduler.plan import Decision, decide, dispatch_id
from loom.subjects import goal_subject, incoming_subject

log = logging.getLogger(__name__)

SCHEDULES_BUCKET = "loom-schedules"
#: The longest a scheduler sleeps before looking again (picks up other replicas' records, clock jumps).
MAX_SLEEP = 30.0

FIRES = counter(
    "loom_schedule_fires_total", "Slots this process dispatched (stored, not duplicates).", ["schedule"]
)
DUPLICATES = counter(
    "loom_schedule_duplicate_fires_total",
    "Slots another replica had already dispatched (dropped by the duplicate window).",
    ["schedule"],
)
MISSED = counter("loom_schedule_missed_total", "Slots not fired under the missed-fire policy.", ["schedule"])
DISPATCH_ERRORS = counter(
    "loom_schedule_dispatch_errors_total", "Dispatches that failed to publish.", ["schedule"]
)
LAST_FIRE = gauge("loom_schedule_last_fire_timestamp_seconds", "Last slot handled (Unix time).", ["schedule"])
NEXT_FIRE = gauge("loom_schedule_next_fire_timestamp_seconds", "Next slot (Unix time).", ["schedule"])


class Clock(Protocol):
    """Where the scheduler gets the time and how it waits."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScheduleRecord(BaseModel):
    """What the KV bucket remembers of one schedule."""

    last_fire: datetime | None = None
    next_fire: datetime | None = None
    last_dispatch_id: str | None = None
    missed_total: int = 0


def record_key(schedule: str) -> str:
    """A KV-safe key for a schedule name (names with other characters get a hash suffix)."""
    safe = re.sub(r"[^-_A-Za-z0-9]", "_", schedule)
    if safe == schedule:
        return safe
    return f"{safe}-{hashlib.sha256(schedule.encode()).hexdigest()[:8]}"


def stable_id(dispatch: str) -> str:
    """The goal or task id of one slot's dispatch (the same on every replica)."""
    return hashlib.sha256(dispatch.encode()).hexdigest()[:32]


def load_schedules(paths: Iterable[str | Path]) -> list[ScheduleSpec]:
    """Schedules from manifests, plain YAML or the original's ``schedules:`` list files."""
    specs: list[ScheduleSpec] = [
        r.spec if r.spec.name else r.spec.model_copy(update={"name": r.name})
        for r in load_paths(paths)
        if r.kind == "Schedule"
    ]
    if not specs:
        raise LoadError([f"{', '.join(map(str, paths))}: no Schedule found"])
    names = [s.schedule_name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LoadError([f"duplicate schedule names: {', '.join(dupes)}"])
    return specs


@dataclass(frozen=True)
class Dispatch:
    """One fire sent (or found already sent by another replica)."""

    schedule: str
    fire: datetime
    dispatch_id: str
    subject: str
    stored: bool


def build_dispatch(spec: ScheduleSpec, fire: datetime) -> tuple[str, str, bytes]:
    """(Nats-Msg-Id, subject, body) of the dispatch for one slot."""
    did = dispatch_id(spec.schedule_name, fire)
    meta = {"schedule": spec.schedule_name, "fire_time": fire.astimezone(UTC).isoformat()}
    common: dict[str, Any] = {"tenant": spec.tenant, "request_id": did, "metadata": meta}
    if spec.dispatch_type == "goal":
        assert spec.goal is not None
        goal = GoalMessage(
            goal_id=stable_id(did),
            instruction=spec.goal.instruction,
            context=spec.goal.context,
            pipeline=spec.goal.pipeline,
            priority=spec.goal.priority,
            **common,
        )
        return did, goal_subject(goal.pipeline, goal.tenant), goal.to_bytes()
    assert spec.task is not None
    task = TaskMessage(
        task_id=stable_id(did),
        worker_type=spec.task.worker_type,
        model_tier=spec.task.tier,
        payload=spec.task.payload,
        priority=spec.task.priority,
        **common,
    )
    return did, incoming_subject(task.tenant), task.to_bytes()


class Scheduler:
    """Fires a set of schedules. ``tick`` is one pass; ``run`` loops until stopped."""

    def __init__(self, bus: Bus, schedules: Sequence[ScheduleSpec], *, clock: Clock | None = None):
        self.bus = bus
        self.schedules = list(schedules)
        self.clock: Clock = clock or SystemClock()
        self._kv: Any = None
        self.next_fires: dict[str, datetime] = {}

    async def _store(self) -> Any:
        if self._kv is None:
            self._kv = await self.bus.key_value(SCHEDULES_BUCKET)
        return self._kv

    async def record(self, schedule: str) -> ScheduleRecord | None:
        """The stored record of a schedule."""
        data = await kv_get(await self._store(), record_key(schedule), within=self.bus.timeout)
        return None if data is None else ScheduleRecord.model_validate_json(data)

    async def tick(self) -> list[Dispatch]:
        """One pass over every schedule at the clock's now."""
        now = self.clock.now()
        sent = [await self._tick_one(spec, now) for spec in self.schedules]
        return [d for d in sent if d is not None]

    async def _tick_one(self, spec: ScheduleSpec, now: datetime) -> Dispatch | None:
        name = spec.schedule_name
        record = await self.record(name) or ScheduleRecord()
        decision: Decision = decide(spec, record.last_fire, now)
        if decision.missed_count:
            MISSED.labels(name).inc(decision.missed_count)
            shown = ", ".join(t.isoformat() for t in decision.missed[:3])
            log.warning(
                "schedule %s: %d slot(s) missed (%s%s) under policy %s",
                name,
                decision.missed_count,
                shown,
                ", ..." if decision.missed_count > 3 else "",
                spec.missed_fire_policy,
            )
        sent = await self._dispatch(spec, decision.fire) if decision.fire is not None else None
        if decision.next_fire is not None:
            self.next_fires[name] = decision.next_fire
            NEXT_FIRE.labels(name).set(decision.next_fire.timestamp())
        if decision.handled_up_to is not None and decision.handled_up_to != record.last_fire:
            record.last_fire = decision.handled_up_to
            record.next_fire = decision.next_fire
            record.missed_total += decision.missed_count
            if sent is not None:
                record.last_dispatch_id = sent.dispatch_id
            await (await self._store()).put(record_key(name), record.model_dump_json().encode())
            LAST_FIRE.labels(name).set(decision.handled_up_to.timestamp())
        return sent

    async def _dispatch(self, spec: ScheduleSpec, fire: datetime) -> Dispatch:
        name = spec.schedule_name
        did, subject, body = build_dispatch(spec, fire)
        try:
            with tracing.root(f"fire {name}", submitted_by=f"schedule:{name}"):
                stored = await self.bus.js_publish_once(subject, body, msg_id=did)
        except Exception:
            DISPATCH_ERRORS.labels(name).inc()
            raise
        (FIRES if stored else DUPLICATES).labels(name).inc()
        log.info("schedule %s fired %s -> %s%s", name, did, subject, "" if stored else " (already sent)")
        return Dispatch(name, fire, did, subject, stored)

    def sleep_seconds(self) -> float:
        """How long until the next slot of any schedule (bounded by :data:`MAX_SLEEP`)."""
        if not self.next_fires:
            return MAX_SLEEP
        wait = (min(self.next_fires.values()) - self.clock.now()).total_seconds()
        return min(MAX_SLEEP, max(0.0, wait))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick at every slot until ``stop`` is set. A failed pass is logged and retried."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:
                log.error("scheduler pass failed (retrying): %s", exc)
                self.next_fires.clear()
                await _sleep_or_stop(self.clock, 1.0, stop)
                continue
            await _sleep_or_stop(self.clock, self.sleep_seconds(), stop)


async def _sleep_or_stop(clock: Clock, seconds: float, stop: asyncio.Event) -> None:
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, stopper):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


class SchedulerService:
    """``loom scheduler``: run a :class:`Scheduler` on the bus it is given until stopped."""

    def __init__(self, bus: Bus, schedules: Sequence[ScheduleSpec], *, clock: Clock | None = None):
        self.bus = bus
        self.schedules = list(schedules)
        self.clock = clock
        self.ready = asyncio.Event()

    def is_ready(self) -> bool:
        """Readiness: started and NATS connected right now, like workers and routers."""
        return self.ready.is_set() and self.bus.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Fire schedules until ``stop`` is set (the bus stays open: its owner closes it)."""
        try:
            scheduler = Scheduler(self.bus, self.schedules, clock=self.clock)
            self.ready.set()
            log.info(
                "scheduler: %d schedule(s): %s",
                len(self.schedules),
                ", ".join(s.schedule_name for s in self.schedules),
            )
            await scheduler.run(stop)
        finally:
            self.ready.clear()
