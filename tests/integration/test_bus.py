"""The bus against a real nats-server: streams, dedupe, the pull loop, results, key-value, auth."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time

import pytest
from tests.support.nats_server import free_port, nats_server_binary
from tests.support.processes import bus, consumer_empty, poll

from loom.bus import STREAM_ADVISORIES, Bus, BusError, Delivery, slots_ahead
from loom.messages import TaskMessage, TaskResult, TaskStatus
from loom.settings import NatsSettings
from loom.subjects import STREAM_DEAD_LETTER, STREAM_GOALS, STREAM_INCOMING, STREAM_TASKS, task_subject

pytestmark = pytest.mark.integration
__all__ = ["bus"]


async def test_streams_are_declared_idempotently_and_updated(bus: Bus) -> None:
    await bus.ensure_streams()
    names = {s.config.name for s in await bus.js.streams_info()}
    assert {STREAM_INCOMING, STREAM_TASKS, STREAM_DEAD_LETTER, STREAM_GOALS, STREAM_ADVISORIES} <= names
    info = await bus.js.stream_info(STREAM_DEAD_LETTER)
    assert info.config.max_age == 7 * 24 * 3600 and info.config.duplicate_window == 120
    # someone changed the config: declaring again puts it back
    cfg = info.config
    cfg.max_age = 600
    await bus.js.update_stream(cfg)
    await bus.ensure_streams()
    assert (await bus.js.stream_info(STREAM_DEAD_LETTER)).config.max_age == 7 * 24 * 3600


async def test_msg_id_dedupes_and_unknown_subject_fails(bus: Bus, nats_url: str) -> None:
    t = TaskMessage(worker_type="echo")
    subject = task_subject("echo", "local")
    await bus.publish_task(t, subject=subject, msg_id="once")
    await bus.publish_task(t, subject=subject, msg_id="once")
    await bus.publish_task(t, subject=subject)
    assert await bus.stream_messages(STREAM_TASKS) == 2
    # No stream stores it: retried as if a stream were electing a leader, until the publish timeout.
    short = await Bus.connect(NatsSettings(url=nats_url, publish_timeout=1.0), ensure_streams=False)
    try:
        with pytest.raises(BusError, match=r"not stored within 1s: no stream stores it"):
            await short.js_publish("nowhere.at.all", b"x")
    finally:
        await short.close()


async def test_consumer_update_and_lag(bus: Bus) -> None:
    name = await bus.ensure_worker_consumer("echo", "local", ack_wait=5, max_deliver=3, max_ack_pending=10)
    await bus.ensure_worker_consumer("echo", "local", ack_wait=9, max_deliver=4, max_ack_pending=20)
    info = await bus.js.consumer_info(STREAM_TASKS, name)
    assert info.config.ack_wait == 9 and info.config.max_deliver == 4
    for _ in range(3):
        await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    lag = await bus.consumer_info(STREAM_TASKS, name)
    assert (lag.num_pending, lag.num_ack_pending, lag.total) == (3, 0, 3)


async def test_pull_loop_never_exceeds_max_in_flight(bus: Bus) -> None:
    name = await bus.ensure_worker_consumer("echo", "local", ack_wait=30, max_deliver=3, max_ack_pending=1000)
    n, limit = 300, 7
    await asyncio.gather(
        *(
            bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
            for _ in range(n)
        )
    )
    running = peak = done = 0
    stop = asyncio.Event()

    async def handler(d: Delivery) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        done += 1
        await d.ack()
        if done == n:
            stop.set()

    await asyncio.wait_for(
        bus.consume(STREAM_TASKS, name, handler, max_in_flight=limit, batch=64, stop=stop), 30
    )
    assert done == n and peak == limit
    await poll(lambda: consumer_empty(bus, STREAM_TASKS, name))


async def _publish_echo(b: Bus, n: int) -> None:
    for _ in range(n):
        await b.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))


async def test_a_few_messages_wait_ahead_of_the_slots_and_go_back_at_once_on_stop(bus: Bus) -> None:
    name = await bus.ensure_worker_consumer("echo", "local", ack_wait=60, max_deliver=5, max_ack_pending=100)
    await _publish_echo(bus, 20)
    stop, release = asyncio.Event(), asyncio.Event()
    started = 0

    async def held(d: Delivery) -> None:
        nonlocal started
        started += 1
        await release.wait()

    ahead = slots_ahead(8, 8)
    assert ahead == 2
    loop = asyncio.create_task(
        bus.consume(
            STREAM_TASKS, name, held, max_in_flight=8, batch=8, stop=stop, drain_grace=0.1, ahead=ahead
        )
    )
    await poll(lambda: _lag_is(bus, name, ack_pending=8 + ahead))  # 8 running, 2 pulled ahead
    await asyncio.sleep(0.3)
    assert started == 8  # never more handlers than max_in_flight
    assert (await bus.consumer_info(STREAM_TASKS, name)).num_ack_pending == 8 + ahead
    stop.set()
    await asyncio.wait_for(loop, 10)
    # every message handed back (nak'ed): the next process takes all 20 now, not after the 60 s ack wait
    again = await asyncio.wait_for(_take(bus, name, 20), 10)
    assert sorted(again) == [1] * 10 + [2] * 10  # the 10 held (8 running, 2 ahead) come back once each


async def _take(b: Bus, name: str, n: int) -> list[int]:
    """Consume ``n`` messages of ``name``, acknowledging each; their delivery counts."""
    counts: list[int] = []
    stop = asyncio.Event()

    async def take(d: Delivery) -> None:
        counts.append(d.num_delivered)
        await d.ack()
        if len(counts) == n:
            stop.set()

    await b.consume(STREAM_TASKS, name, take, max_in_flight=n, batch=n, stop=stop)
    return counts


async def _lag_is(b: Bus, name: str, *, ack_pending: int) -> bool:
    return (await b.consumer_info(STREAM_TASKS, name)).num_ack_pending == ack_pending


async def test_a_message_that_waited_ahead_gets_the_whole_ack_wait_when_it_starts(bus: Bus) -> None:
    # 4 slots, 1 message ahead; each handler takes 2 s of a 3 s ack wait. The fifth waits 2 s for
    # a slot, then runs 2 s: 4 s after its delivery, past the ack wait unless its start reset it.
    name = await bus.ensure_worker_consumer("echo", "local", ack_wait=3, max_deliver=5, max_ack_pending=100)
    assert slots_ahead(4, 4) == 1
    await _publish_echo(bus, 5)
    stop = asyncio.Event()
    deliveries: list[tuple[int, int]] = []

    async def slow(d: Delivery) -> None:
        deliveries.append((d.stream_seq, d.num_delivered))
        await asyncio.sleep(2.0)
        await d.ack()

    loop = asyncio.create_task(
        bus.consume(STREAM_TASKS, name, slow, max_in_flight=4, batch=4, stop=stop, ahead=1)
    )
    try:
        await poll(lambda: consumer_empty(bus, STREAM_TASKS, name), timeout=20)
        await asyncio.sleep(1.0)  # a redelivery after the ack wait would show up here
    finally:
        stop.set()
        await asyncio.wait_for(loop, 10)
    assert sorted(deliveries) == [(seq, 1) for seq in range(1, 6)]


async def test_stop_hands_back_unfinished_work_for_immediate_redelivery(bus: Bus) -> None:
    name = await bus.ensure_worker_consumer("echo", "local", ack_wait=60, max_deliver=5, max_ack_pending=100)
    await bus.publish_task(TaskMessage(worker_type="echo"), subject=task_subject("echo", "local"))
    stop = asyncio.Event()
    started = asyncio.Event()

    async def stuck(d: Delivery) -> None:
        started.set()
        await asyncio.sleep(3600)

    loop = asyncio.create_task(
        bus.consume(STREAM_TASKS, name, stuck, max_in_flight=4, batch=4, stop=stop, drain_grace=0.1)
    )
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(loop, 10)
    # nak'ed, not waiting for the 60 s ack wait: another consumer gets it right away
    t0 = time.monotonic()
    got = await asyncio.wait_for(_take(bus, name, 1), 10)
    assert got == [2] and time.monotonic() - t0 < 5


async def test_results_reach_subscribers_and_time_out_otherwise(bus: Bus) -> None:
    sub = await bus.subscribe_results("goal-1")
    with pytest.raises(TimeoutError):
        await sub.get(timeout=0.05)
    await bus.publish_result(
        TaskResult(
            task_id="t",
            parent_task_id="goal-1",
            worker_type="echo",
            status=TaskStatus.COMPLETED,
            output={"ok": True},
        )
    )
    got = TaskResult.from_bytes(await sub.get(timeout=5))
    assert got.output == {"ok": True}
    await sub.close()


async def test_key_value_bucket_is_created_and_reused(bus: Bus) -> None:
    kv = await bus.key_value("loom-test", ttl=60)
    await kv.put("a", b"1")
    again = await bus.key_value("loom-test")
    assert (await again.get("a")).value == b"1"


async def test_processes_opening_one_bucket_at_once_with_different_ttls_all_get_it(
    bus: Bus, nats_url: str
) -> None:
    others = [await Bus.connect(NatsSettings(url=nats_url, name=f"kv-{i}")) for i in range(3)]
    try:
        for round_ in range(5):  # each round races the creation of a fresh bucket
            name = f"loom-race-{round_}"
            opened = await asyncio.gather(
                *(b.key_value(name, ttl=30.0 * (i + 1)) for i, b in enumerate([bus, *others] * 2))
            )
            await opened[0].put("k", b"v")
            assert all([(await kv.get("k")).value == b"v" for kv in opened])
    finally:
        for b in others:
            await b.close()


def _server(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    store = tempfile.mkdtemp(prefix="loom-nats-auth-")
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


@pytest.mark.parametrize(
    ("server_args", "settings"),
    [
        (("--auth", "s3cret"), {"token": "s3cret"}),
        (("--user", "loom", "--pass", "pw"), {"user": "loom", "password": "pw"}),
    ],
)
async def test_connects_with_token_or_user_password(
    server_args: tuple[str, ...], settings: dict[str, str]
) -> None:
    proc, port = _server(*server_args)
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                b = await Bus.connect(NatsSettings(url=url, **settings))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await b.publish_task(TaskMessage(worker_type="echo"))
        assert await b.stream_messages(STREAM_INCOMING) == 1
        await b.close()
    finally:
        proc.terminate()
        proc.wait(10)
