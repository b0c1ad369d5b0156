"""Fairness and quotas on a real nats-server: tenant budgets, stream limits, payload size.

The router runs in this process with a hand-driven clock, so what passes is decided by
the limits alone (a frozen clock refills nothing); dispatches are counted in the worker
stream, in dispatch order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from tests.support.processes import bus, collect, poll

from loom.api.router_policy import RouterConfig, RouterPolicySpec, StreamLimits
from loom.bus import Bus, BusError, Delivery
from loom.goal_delivery import read_goal
from loom.messages import DeadLetterReason, GoalMessage, TaskMessage
from loom.router.service import RouterOptions, RouterService
from loom.router.usage import read_usage
from loom.settings import NatsSettings
from loom.subjects import STREAM_DEAD_LETTER, STREAM_GOALS, STREAM_INCOMING, STREAM_TASKS

pytestmark = pytest.mark.integration
__all__ = ["bus"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class RunningRouter:
    service: RouterService
    clock: Clock

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds
        self.service.wake.set()


@contextlib.asynccontextmanager
async def router(b: Bus, **policy: object) -> AsyncIterator[RunningRouter]:
    clock = Clock()
    spec = RouterPolicySpec.model_validate(policy)
    service = RouterService(b, RouterConfig(policy=spec), RouterOptions(no_worker_wait=0), clock=clock)
    stop = asyncio.Event()
    run = asyncio.create_task(service.run(stop))
    try:
        await poll(lambda: service.ready)
        yield RunningRouter(service, clock)
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)


async def dispatched(b: Bus) -> list[str]:
    """The tenants of the tasks in the worker stream, in dispatch order."""
    out = []
    for seq in range(1, 10_000):
        stored = await b.get_stream_message(STREAM_TASKS, seq)
        if stored is None:
            if seq > (await b.js.stream_info(STREAM_TASKS)).state.last_seq:
                return out
            continue
        out.append(json.loads(stored.data)["tenant"])
    return out


def count(tenants: list[str], prefix: str) -> int:
    return sum(1 for t in tenants if t.startswith(prefix))


async def publish(b: Bus, tenant: str, n: int) -> None:
    for _ in range(n):
        await b.publish_task(TaskMessage(worker_type="echo", model_tier="local", tenant=tenant))


async def test_a_flooding_tenant_does_not_delay_another_and_rotated_names_share_the_default(bus: Bus) -> None:
    policy = {
        "rateLimits": {"local": {"requestsPerMinute": 1000}},
        "tenantLimits": {
            "default": {"requestsPerMinute": 3},
            "overrides": {"a": {"requestsPerMinute": 5}, "b": {"requestsPerMinute": 5}},
        },
        "onLimit": {"maxWaitSeconds": 3600},
    }
    async with router(bus, **policy) as r:
        await publish(bus, "a", 50)  # ten times a's limit, all ahead of b in the router's input
        await publish(bus, "b", 5)  # within b's limit
        for i in range(20):  # one client rotating tenant names
            await publish(bus, f"rot{i}", 1)
        await poll(lambda: len(r.service.queue) == 45 + 17)  # everything else pulled and waiting
        first = await dispatched(bus)
        # b got all five at once (what its own limit allows), although 45 of a's were waiting before them
        assert count(first, "b") == 5
        assert count(first, "a") == 5
        assert count(first, "rot") == 3  # twenty names, one shared budget of three
        assert first.index("b") < 10  # b's went out right behind a's first five, not after a's backlog

        r.advance(60)  # one more minute of every budget
        await poll(lambda: len(r.service.queue) == 40 + 14)
        later = await dispatched(bus)
        assert (count(later, "a"), count(later, "b"), count(later, "rot")) == (10, 5, 6)


async def test_an_oversized_task_is_dead_lettered_once_as_too_large(bus: Bus) -> None:
    async with router(bus, maxPayloadBytes=2048) as r:
        big = TaskMessage(worker_type="echo", model_tier="local", tenant="t", payload={"text": "x" * 5000})
        small = TaskMessage(worker_type="echo", model_tier="local", tenant="t", payload={"text": "ok"})
        sub = await bus.subscribe_results(big.result_key, "t")
        await bus.publish_task(big)
        await bus.publish_task(small)
        (failed,) = await collect(sub, 1)
        assert failed["task_id"] == big.task_id and failed["error_code"] == "too_large"
        assert "over the limit of 2048 bytes" in failed["error"] and "xxxx" not in json.dumps(failed)
        await poll(lambda: bus.stream_messages(STREAM_TASKS))
        (only,) = await dispatched(bus)  # the small one was routed; the router keeps going
        assert only == "t" and r.service.ready
        await asyncio.sleep(0.3)  # a redelivery, were there one, would add a second dead letter
        (stored,) = await bus.dead_letters()
        dl = stored.dead_letter
        assert dl.reason == DeadLetterReason.TOO_LARGE and dl.task_id == big.task_id and dl.tenant == "t"
        assert dl.original == "" and f"{len(big.to_bytes())} bytes" in dl.detail
        assert await bus.stream_messages(STREAM_INCOMING) == 0
        with pytest.raises(BusError, match="body was not kept"):
            await bus.replay_dead_letter(stored)


async def test_stream_limits_are_declared_updated_and_refuse_a_tenant_over_its_cap(
    bus: Bus, nats_url: str
) -> None:
    info = (await bus.js.stream_info(STREAM_INCOMING)).config
    defaults = StreamLimits()
    assert (info.max_bytes, info.max_msgs, info.max_age) == (
        defaults.max_bytes,
        defaults.max_messages,
        defaults.max_age_seconds,
    )
    assert info.max_msgs_per_subject == defaults.max_messages_per_tenant and info.discard_new_per_subject
    assert (await bus.js.stream_info(STREAM_DEAD_LETTER)).config.max_bytes == defaults.dead_letter_max_bytes

    # The router applies its policy's limits to the existing streams (an update, not a failure).
    await bus.ensure_streams(StreamLimits(max_messages_per_tenant=3, max_messages=2000, max_age_seconds=3600))
    for stream in (STREAM_INCOMING, STREAM_GOALS):
        cfg = (await bus.js.stream_info(stream)).config
        assert (cfg.max_msgs_per_subject, cfg.max_msgs, cfg.max_age) == (3, 2000, 3600)
    assert (await bus.js.stream_info(STREAM_TASKS)).config.max_msgs_per_subject in (None, -1)

    await publish(bus, "x", 3)
    with pytest.raises(BusError, match=r"(?i)maximum messages per subject"):
        await publish(bus, "x", 1)  # x's fourth waiting task is refused to x ...
    await publish(bus, "y", 3)  # ... while y still has its own room
    assert await bus.stream_messages(STREAM_INCOMING) == 6

    # Another role connecting with no policy keeps the router's limits instead of resetting them.
    other = await Bus.connect(NatsSettings(url=nats_url, name="other"))
    try:
        assert (await other.js.stream_info(STREAM_INCOMING)).config.max_msgs_per_subject == 3
    finally:
        await other.close()

    # Raising the limit updates the stream again; x has room for more.
    await bus.ensure_streams(StreamLimits(max_messages_per_tenant=5))
    await publish(bus, "x", 2)
    with pytest.raises(BusError):
        await publish(bus, "x", 1)


async def test_a_full_stream_discards_as_configured(bus: Bus) -> None:
    await bus.ensure_streams(StreamLimits(max_messages=1000, max_messages_per_tenant=5000, discard="old"))
    await publish(bus, "x", 1005)  # "old": the oldest make room, nothing is refused
    assert await bus.stream_messages(STREAM_INCOMING) == 1000
    await bus.ensure_streams(StreamLimits(max_messages=1000, max_messages_per_tenant=5000, discard="new"))
    with pytest.raises(BusError, match=r"(?i)maximum messages"):
        await publish(bus, "y", 1)  # "new": a full stream refuses the publish, keeping what it holds
    assert await bus.stream_messages(STREAM_INCOMING) == 1000


async def test_an_oversized_goal_is_dead_lettered_once_as_too_large_by_the_goal_runner(bus: Bus) -> None:
    durable = await bus.ensure_goal_consumer("p", ack_wait=10, max_deliver=3, max_ack_pending=10)
    big = GoalMessage(instruction="summarize", pipeline="p", tenant="t", context={"doc": "y" * 5000})
    small = GoalMessage(instruction="summarize", pipeline="p", tenant="t")
    sub = await bus.subscribe_results(big.goal_id, "t")
    await bus.publish_goal(big)
    await bus.publish_goal(small)
    read: list[GoalMessage] = []

    async def runner(d: Delivery) -> None:
        goal = await read_goal(bus, d, "pipeline", max_bytes=2048)
        if goal is not None:
            read.append(goal)
            await d.ack()

    stop = asyncio.Event()
    consuming = asyncio.create_task(
        bus.consume(STREAM_GOALS, durable, runner, max_in_flight=4, batch=4, stop=stop)
    )
    try:
        (failed,) = await collect(sub, 1)
        assert failed["goal_id"] == big.goal_id and failed["status"] == "failed"
        assert failed["error"].startswith("too_large: goal message is") and "yyyy" not in failed["error"]
        await poll(lambda: len(read) == 1)
        assert read[0].goal_id == small.goal_id
        (stored,) = await bus.dead_letters()
        assert stored.dead_letter.reason == DeadLetterReason.TOO_LARGE
        assert stored.dead_letter.goal_id == big.goal_id and stored.dead_letter.original == ""
        await poll(lambda: _stored(bus, STREAM_GOALS, 0))  # each is settled after it was read
    finally:
        stop.set()
        await consuming


async def test_a_router_keeping_its_limits_in_memory_stores_their_use_for_readers(bus: Bus) -> None:
    """One router (``--limits auto``): its use is all the use there is; RouterPolicy status and
    ``loom budget`` read the snapshot it stores, and a stale one (the router gone) reads as unknown."""
    policy = {
        "rateLimits": {"local": {"requestsPerMinute": 10, "maxConcurrent": 2}},
        "tenantLimits": {"overrides": {"a": {"requestsPerMinute": 5}}},
    }
    spec = RouterPolicySpec.model_validate(policy)
    service = RouterService(
        bus, RouterConfig(policy=spec), RouterOptions(no_worker_wait=0, budget_interval=0.1), clock=Clock()
    )
    stop = asyncio.Event()
    run = asyncio.create_task(service.run(stop))
    try:
        await poll(lambda: service.ready)
        await publish(bus, "a", 3)  # no worker answers: two go out and stay in flight, one waits

        async def rows() -> dict[tuple[str, str], float | None]:
            limits, _ = await read_usage(bus, spec, time.time(), shared=False)
            return {(u.scope, u.what): u.used for u in limits}

        async def settled() -> bool:
            return (await rows()).get(("tier:local", "in_flight")) == 2.0

        await poll(settled, timeout=20)
        assert await rows() == {
            ("tier:local", "requests"): 2.0,  # a frozen clock refills nothing
            ("tier:local", "in_flight"): 2.0,
            ("tenant:a", "requests"): 2.0,
            ("tenant:*", "requests"): 0.0,  # the default tenant budget (on by default): unused
        }
        limits, _ = await read_usage(bus, spec, time.time())  # not told how the limits are kept
        assert {(u.scope, u.what, u.used, u.limit) for u in limits} >= {("tier:local", "requests", 2.0, 10.0)}
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
    later, _ = await read_usage(bus, spec, time.time() + 120, shared=False)
    assert {u.used for u in later} == {None}  # no router writes it any more: unknown, not zero


async def _stored(b: Bus, stream: str, n: int) -> bool:
    return await b.stream_messages(stream) == n
