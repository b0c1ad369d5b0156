"""The in-memory bus keeps JetStream's delivery contract: what the role scenarios rely on, one rule
at a time (the scenarios themselves run on it and on a real nats-server: test_role_scenarios.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from tests.support.processes import poll

from loom.bus import BusError, Delivery
from loom.bus.memory import MemoryBroker, MemoryBus
from loom.messages import GoalMessage, TaskMessage, TaskResult, TaskStatus
from loom.subjects import STREAM_ADVISORIES, STREAM_GOALS, STREAM_TASKS, InvalidSubject, task_subject


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    yield b
    await b.close()


async def consuming(
    bus: MemoryBus,
    durable: str,
    handler: Callable[[Delivery], Awaitable[None]],
    *,
    stream: str = STREAM_TASKS,
    max_in_flight: int = 4,
    drain_grace: float = 1.0,
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        bus.consume(
            stream, durable, handler, max_in_flight=max_in_flight, batch=4, stop=stop, drain_grace=drain_grace
        )
    )
    await asyncio.sleep(0)
    return stop, task


class HandClock:
    """The broker's clock, moved by the test: nak delays and ack waits pass without being waited out."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def timed() -> AsyncIterator[tuple[MemoryBus, HandClock]]:
    clock = HandClock()
    b = MemoryBus(MemoryBroker(clock))
    yield b, clock
    await b.close()


async def advance(bus: MemoryBus, clock: HandClock, seconds: float) -> None:
    """Move the clock, wake the pull loops, and let them hand out whatever became due."""
    clock.t += seconds
    bus.broker.tick()
    await idle()


async def idle() -> None:
    """Let every ready task run (the twin does no I/O, so a few loop turns settle it)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_nak_with_delay_redelivers_after_the_delay_with_the_count(
    timed: tuple[MemoryBus, HandClock],
) -> None:
    bus, clock = timed
    durable = await bus.ensure_worker_consumer("echo", "local", ack_wait=30, max_deliver=5, max_ack_pending=9)
    seen: list[tuple[int, float]] = []

    async def handler(d: Delivery) -> None:
        seen.append((d.num_delivered, clock()))
        await (d.nak(delay=5.0) if d.num_delivered == 1 else d.ack())

    stop, task = await consuming(bus, durable, handler)
    await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    await poll(lambda: len(seen) == 1)
    await advance(bus, clock, 4.9)
    assert len(seen) == 1  # not before the delay
    await advance(bus, clock, 0.1)
    await poll(lambda: len(seen) == 2)
    stop.set()
    await task
    assert [n for n, _ in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] >= 5.0
    assert await bus.stream_messages(STREAM_TASKS) == 0  # acknowledged: removed from the work queue


async def test_an_unacknowledged_message_comes_back_after_ack_wait_until_max_deliver(
    timed: tuple[MemoryBus, HandClock],
) -> None:
    bus, clock = timed
    durable = await bus.ensure_worker_consumer(
        "echo", "local", ack_wait=30, max_deliver=3, max_ack_pending=10
    )
    seen: list[int] = []

    async def silent(d: Delivery) -> None:
        seen.append(d.num_delivered)  # never settles: the ack wait runs out

    stop, task = await consuming(bus, durable, silent)
    await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    await poll(lambda: seen == [1])
    await advance(bus, clock, 29)
    assert seen == [1]  # still within its ack wait
    await advance(bus, clock, 1)
    await poll(lambda: seen == [1, 2])
    await advance(bus, clock, 30)
    await poll(lambda: seen == [1, 2, 3])
    await advance(bus, clock, 30)
    # Due again after its last delivery: the server's MAX_DELIVERIES advisory, captured once.
    await poll(lambda: bus.broker.messages(STREAM_ADVISORIES, ">") != [])
    await advance(bus, clock, 30)
    stop.set()
    await task
    assert seen == [1, 2, 3]  # no fourth delivery
    assert await bus.stream_messages(STREAM_TASKS) == 1  # stays stored, as on the server
    lag = await bus.consumer_info(STREAM_TASKS, durable)
    assert (lag.num_pending, lag.num_ack_pending) == (0, 0)
    (adv,) = bus.broker.messages(STREAM_ADVISORIES, ">")
    assert adv.subject == f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM_TASKS}.{durable}"
    body = json.loads(adv.data)
    assert (body["stream"], body["consumer"], body["stream_seq"], body["deliveries"]) == (
        STREAM_TASKS,
        durable,
        1,
        3,
    )


async def test_in_progress_keeps_a_long_handler_from_redelivery(timed: tuple[MemoryBus, HandClock]) -> None:
    bus, clock = timed
    durable = await bus.ensure_worker_consumer(
        "echo", "local", ack_wait=30, max_deliver=5, max_ack_pending=10
    )
    seen: list[int] = []

    async def slow(d: Delivery) -> None:
        seen.append(d.num_delivered)
        for _ in range(5):  # 100 s of work against a 30 s ack wait, a heartbeat every 20 s
            await advance(bus, clock, 20)
            await d.in_progress()
        await d.ack()

    stop, task = await consuming(bus, durable, slow)
    await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    await poll(lambda: bus.broker.streams[STREAM_TASKS].messages == {})
    stop.set()
    await task
    assert seen == [1]


async def test_a_failing_handler_is_nak_ed_and_term_is_final(timed: tuple[MemoryBus, HandClock]) -> None:
    bus, clock = timed
    durable = await bus.ensure_worker_consumer("echo", "local", ack_wait=30, max_deliver=5, max_ack_pending=9)
    seen: list[int] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.num_delivered)
        if d.num_delivered == 1:
            raise RuntimeError("boom")  # the pull loop naks it (delay 1 s), as the real one does
        await d.term()

    stop, task = await consuming(bus, durable, handler)
    await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    await poll(lambda: seen == [1])
    await advance(bus, clock, 0.9)
    assert seen == [1]  # the nak's delay holds it back
    await advance(bus, clock, 0.1)
    await poll(lambda: seen == [1, 2])
    await advance(bus, clock, 60)  # termed: neither a delay nor the ack wait brings it back
    stop.set()
    await task
    assert seen == [1, 2]
    assert await bus.stream_messages(STREAM_TASKS) == 0


async def test_max_in_flight_bounds_the_running_handlers(bus: MemoryBus) -> None:
    durable = await bus.ensure_worker_consumer("echo", "local", ack_wait=30, max_deliver=5, max_ack_pending=9)
    running = peak = done = 0

    async def handler(d: Delivery) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        done += 1
        await d.ack()

    stop, task = await consuming(bus, durable, handler, max_in_flight=2)
    for _ in range(6):
        await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    await poll(lambda: done == 6)
    stop.set()
    await task
    assert peak == 2


async def test_max_ack_pending_holds_back_deliveries_as_jetstream_does(bus: MemoryBus) -> None:
    durable = await bus.ensure_worker_consumer("echo", "local", ack_wait=30, max_deliver=5, max_ack_pending=1)
    running = peak = done = 0

    async def handler(d: Delivery) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        done += 1
        await d.ack()

    stop, task = await consuming(bus, durable, handler, max_in_flight=4)
    for _ in range(3):
        await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    await poll(lambda: done == 3)
    stop.set()
    await task
    assert peak == 1


async def test_stop_drains_then_releases_unfinished_handlers(bus: MemoryBus) -> None:
    durable = await bus.ensure_worker_consumer("echo", "local", ack_wait=30, max_deliver=5, max_ack_pending=9)
    started = asyncio.Event()

    async def stuck(d: Delivery) -> None:
        started.set()
        await asyncio.sleep(60)

    stop, task = await consuming(bus, durable, stuck, drain_grace=0.1)
    await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    await started.wait()
    stop.set()
    await asyncio.wait_for(task, 5)
    # Released by a nak: the next consumer gets it at once, as its second delivery.
    seen: list[int] = []

    async def ack(d: Delivery) -> None:
        seen.append(d.num_delivered)
        await d.ack()

    stop2, task2 = await consuming(bus, durable, ack)
    await poll(lambda: seen == [2])
    stop2.set()
    await task2


async def test_goal_consumers_filter_with_nats_wildcards_and_tenants(bus: MemoryBus) -> None:
    """A pipeline's durable takes its own goals (every tenant's) and nothing of another pipeline."""
    durable = await bus.ensure_goal_consumer("alpha", ack_wait=30, max_deliver=5, max_ack_pending=10)
    got: list[str] = []

    async def handler(d: Delivery) -> None:
        got.append(d.subject)
        await d.ack()

    stop, task = await consuming(bus, durable, handler, stream=STREAM_GOALS)
    await bus.publish_goal(GoalMessage(pipeline="alpha"))
    await bus.publish_goal(GoalMessage(pipeline="alpha", tenant="acme"))
    await bus.publish_goal(GoalMessage(pipeline="beta"))
    await poll(lambda: len(got) == 2)
    await idle()
    stop.set()
    await task
    assert sorted(got) == ["loom.goals.alpha", "loom.goals.alpha.tenant.acme"]
    assert await bus.stream_messages(STREAM_GOALS) == 1  # beta's goal waits for its own consumer


async def test_a_message_id_is_stored_once_and_results_reach_only_their_subscribers(bus: MemoryBus) -> None:
    subject = task_subject("echo", "local")
    assert await bus.js_publish_once(subject, b"{}", msg_id="same") is True
    assert await bus.js_publish_once(subject, b"{}", msg_id="same") is False
    assert await bus.stream_messages(STREAM_TASKS) == 1
    mine = await bus.subscribe_results("k1", "acme")
    other = await bus.subscribe_results("k1")  # the default tenant's subject, not acme's
    result = TaskResult(task_id="k1", worker_type="echo", status=TaskStatus.COMPLETED, tenant="acme")
    await bus.publish_result(result)
    assert TaskResult.from_bytes(await mine.get(timeout=1)).task_id == "k1"
    assert other.pending() == 0
    await mine.close()
    await bus.publish_result(result)
    assert mine.pending() == 0


async def test_bad_input_gets_a_clear_error(bus: MemoryBus) -> None:
    with pytest.raises(InvalidSubject):
        await bus.publish_raw("loom.results.*", b"x")
    with pytest.raises(BusError, match="no stream stores it"):
        await bus.js_publish("nowhere.at.all", b"x")
    with pytest.raises(BusError, match="consumer not found"):
        await bus.consumer_info(STREAM_TASKS, "nobody")
    with pytest.raises(NotImplementedError, match=r"MemoryBus does not implement Bus\.replay_dead_letter"):
        await bus.replay_dead_letter("dl-1")  # type: ignore[attr-defined]
    with pytest.raises(BusError, match="stream not found"):
        await bus.get_stream_message("NO_SUCH_STREAM", 1)
    with pytest.raises(AttributeError):
        _ = bus.no_such_thing  # type: ignore[attr-defined]
    await bus.close()
    with pytest.raises(BusError, match="closed"):
        await bus.js_publish(task_subject("echo", "local"), b"x")


async def test_connections_to_one_broker_share_streams_and_buckets() -> None:
    clock = HandClock()
    broker = MemoryBroker(clock)
    first, second = MemoryBus(broker), MemoryBus(broker)
    await first.key_value_store("b").put("k", b"v")
    assert await second.key_value_store("b").get("k") == b"v"
    assert await MemoryBus().key_value_store("b").get("k") is None  # another broker: another server
    expiring = first.key_value_store("short", ttl=30)
    await expiring.put("k", b"v")
    clock.t += 29.9
    assert await second.key_value_store("short").get("k") == b"v"
    clock.t += 0.1
    assert await expiring.get("k") is None
    await first.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    assert await second.stream_messages(STREAM_TASKS) == 1
