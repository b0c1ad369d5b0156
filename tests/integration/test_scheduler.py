"""The scheduler against a real NATS server, on an injected clock (no real minutes go by)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from loom.api.schedule import ScheduleSpec
from loom.bus import Bus
from loom.messages import GoalMessage, TaskMessage
from loom.scheduler.service import MAX_SLEEP, Scheduler, load_schedules
from loom.settings import NatsSettings
from loom.subjects import STREAM_GOALS, STREAM_INCOMING

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


class SteppedClock:
    """Time that only moves when told to; ``sleep`` jumps ahead instead of waiting."""

    def __init__(self, now: datetime):
        self.current = now
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.current += timedelta(seconds=seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsSettings(url=nats_url, name="test-scheduler"))
    yield b
    await b.close()


def goal_schedule(name: str = "report", **kw: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate(
        {"name": name, "goal": {"instruction": "make the report", "pipeline": "reports", "context": {"k": 1}}}
        | kw
    )


async def stored(bus: Bus, stream: str) -> list[tuple[dict[str, str], bytes]]:
    out: list[tuple[dict[str, str], bytes]] = []
    n = await bus.stream_messages(stream)
    seq = 1
    while len(out) < n:
        msg = await bus.get_stream_message(stream, seq)
        if msg is not None:
            out.append((msg.headers, msg.data))
        seq += 1
    return out


async def test_two_replicas_make_one_dispatch_per_slot(nats_url: str, bus: Bus) -> None:
    spec = goal_schedule(cron="*/5 * * * *")
    other = await Bus.connect(NatsSettings(url=nats_url, name="replica-b"))
    try:
        clock_a, clock_b = SteppedClock(T0), SteppedClock(T0)
        a = Scheduler(bus, [spec], clock=clock_a)
        b = Scheduler(other, [spec], clock=clock_b)
        sent = []
        for i in range(6):
            slot = T0 + timedelta(minutes=5 * i)
            clock_a.current = slot + timedelta(seconds=0.2)
            clock_b.current = slot + timedelta(seconds=0.7)  # a little clock skew
            both = await asyncio.gather(a.tick(), b.tick())
            sent += [d for ds in both for d in ds]
    finally:
        await other.close()
    messages = await stored(bus, STREAM_GOALS)
    ids = [h["Nats-Msg-Id"] for h, _ in messages]
    # A new schedule has missed nothing: the 08:00 slot was already past (by 0.2 s) at its first pass.
    assert ids == [f"report/2024-05-01T08:{5 * i:02d}:00Z" for i in range(1, 6)]
    goals = [GoalMessage.from_bytes(body) for _, body in messages]
    assert len({g.goal_id for g in goals}) == 5
    assert all(g.pipeline == "reports" and g.context == {"k": 1} for g in goals)
    assert goals[0].metadata["fire_time"] == "2024-05-01T08:05:00+00:00"
    # Whoever got there first stored it; exactly one replica's copy per slot was new.
    assert sum(d.stored for d in sent) == 5
    assert all(sum(d.stored for d in sent if d.fire == f) == 1 for f in {d.fire for d in sent})


async def test_restart_knows_what_it_missed(nats_url: str, bus: Bus) -> None:
    skip = goal_schedule("hourly-skip", cron="0 * * * *", missed_fire_policy="skip")
    once = goal_schedule("hourly-once", cron="0 * * * *", missed_fire_policy="fire_once")
    clock = SteppedClock(T0)
    first = Scheduler(bus, [skip, once], clock=clock)
    assert [d.dispatch_id for d in await first.tick()] == [
        "hourly-skip/2024-05-01T08:00:00Z",
        "hourly-once/2024-05-01T08:00:00Z",
    ]
    # The process goes away; a new one starts at 11:20 with the same KV bucket.
    later = SteppedClock(T0 + timedelta(hours=3, minutes=20))
    second = Scheduler(bus, [skip, once], clock=later)
    sent = await second.tick()
    assert [d.dispatch_id for d in sent] == ["hourly-once/2024-05-01T11:00:00Z"]
    rec_skip = await second.record("hourly-skip")
    rec_once = await second.record("hourly-once")
    assert rec_skip is not None and rec_once is not None
    assert rec_skip.missed_total == 3 and rec_once.missed_total == 2
    assert rec_skip.last_fire == rec_once.last_fire == T0 + timedelta(hours=3)
    assert rec_once.next_fire == T0 + timedelta(hours=4)
    # Nothing is fired twice for the same slot by a later pass.
    assert await second.tick() == []


async def test_run_loop_fires_interval_slots_on_the_injected_clock(nats_url: str, bus: Bus) -> None:
    spec = ScheduleSpec.model_validate(
        {
            "name": "ping",
            "interval_seconds": 600,
            "dispatch_type": "task",
            "task": {"worker_type": "pinger", "tier": "local", "payload": {"x": 1}},
            "tenant": "acme",
        }
    )
    clock = SteppedClock(T0 + timedelta(seconds=30))
    scheduler = Scheduler(bus, [spec], clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while await bus.stream_messages(STREAM_INCOMING) < 4:
        assert loop.time() < deadline, "the run loop did not fire four slots"
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    messages = await stored(bus, STREAM_INCOMING)
    tasks = [TaskMessage.from_bytes(body) for _, body in messages][:4]
    assert [t.metadata["fire_time"] for t in tasks] == [
        (T0 + timedelta(minutes=10 * i)).isoformat() for i in range(1, 5)
    ]
    assert all(t.worker_type == "pinger" and t.model_tier == "local" and t.tenant == "acme" for t in tasks)
    # The loop waited through 40 virtual minutes in steps of at most MAX_SLEEP, landing on each slot.
    assert clock.current >= T0 + timedelta(minutes=40)
    assert max(clock.slept) <= MAX_SLEEP
    assert sum(clock.slept) == pytest.approx((clock.current - T0).total_seconds() - 30)


def test_loader_reads_manifests_plain_yaml_and_schedules_lists(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text(
        "apiVersion: loom.dev/v1alpha1\nkind: Schedule\nmetadata: {name: nightly}\n"
        "spec:\n  cron: '0 2 * * *'\n  timezone: Europe/Berlin\n  goal: {instruction: sweep}\n"
    )
    (tmp_path / "plain.yaml").write_text(
        "name: every-minute\ninterval_seconds: 60\ndispatch_type: task\n"
        "task: {worker_type: summarizer, payload: {text: hi}}\n"
    )
    (tmp_path / "original.yaml").write_text(
        "name: my_scheduler\nschedules:\n"
        "  - {name: a, cron: '*/10 * * * *', dispatch_type: goal, goal: {instruction: one, pipeline: p}}\n"
        "  - {name: b, interval_seconds: 30, dispatch_type: goal, goal: {instruction: two}}\n"
    )
    specs = load_schedules([tmp_path])
    assert sorted(s.schedule_name for s in specs) == ["a", "b", "every-minute", "nightly"]
    nightly = next(s for s in specs if s.schedule_name == "nightly")
    assert nightly.timezone == "Europe/Berlin"
