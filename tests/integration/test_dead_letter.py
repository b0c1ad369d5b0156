"""Dead letters: MAX_DELIVERIES advisories, replay, no duplicates."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.support.processes import LoomProcesses, bus, collect, echo_worker, loom_procs, poll, run_cli

from loom.bus import Bus, Delivery
from loom.dead_letters import build_dead_letter
from loom.messages import DeadLetterReason, TaskMessage
from loom.subjects import STREAM_TASKS, task_subject, worker_consumer

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


async def _dead(b: Bus, n: int) -> bool:
    return len(await b.dead_letters()) >= n


async def _tasks_stored(b: Bus, n: int) -> bool:
    return await b.stream_messages(STREAM_TASKS) == n


async def test_max_deliveries_becomes_a_dead_letter_with_the_original(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    router = loom_procs.router()
    # a consumer that takes the task and never settles it, like a worker that keeps dying
    durable = await bus.ensure_worker_consumer(
        "echo", "local", ack_wait=0.3, max_deliver=2, max_ack_pending=10
    )
    sub = await bus.subscribe_results("d1")
    task = TaskMessage(parent_task_id="d1", worker_type="echo", payload={"a": 1})
    await bus.publish_task(task, subject=task_subject("echo", "local"))
    seen: list[int] = []
    stop = asyncio.Event()

    async def hold(d: Delivery) -> None:
        seen.append(d.num_delivered)
        d.settled = True  # drop it on the floor

    consumer = asyncio.create_task(
        bus.consume(STREAM_TASKS, durable, hold, max_in_flight=5, batch=5, stop=stop)
    )
    (result,) = await collect(sub, 1, timeout=20)
    stop.set()
    await consumer
    assert seen == [1, 2]
    assert result["status"] == "failed" and result["error_code"] == "max_deliveries"
    await poll(lambda: _dead(bus, 1))
    (dl,) = await bus.dead_letters()
    assert dl.dead_letter.reason == DeadLetterReason.MAX_DELIVERIES
    assert json.loads(dl.dead_letter.original)["task_id"] == task.task_id
    assert dl.dead_letter.deliveries == 2 and dl.dead_letter.model_tier == "local"
    # removed from the work queue, and counted, after the dead letter and the result were sent
    await poll(lambda: _tasks_stored(bus, 0))
    await poll(lambda: router.metric("loom_dead_letters_total", reason="max_deliveries") == 1)


async def test_replay_after_the_cause_is_fixed(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus, nats_url: str
) -> None:
    echo = echo_worker(tmp_path, "echo")
    router = loom_procs.router(echo)
    sub = await bus.subscribe_results("d2")
    task = TaskMessage(parent_task_id="d2", worker_type="late", payload={"x": 1})
    await bus.publish_task(task)
    (failed,) = await collect(sub, 1)
    assert failed["error_code"] == "unknown_worker_type"
    await poll(lambda: _dead(bus, 1))

    listed = run_cli("dead-letter", "list", nats_url=nats_url)
    assert listed.returncode == 0, listed.stderr
    assert "unknown_worker_type" in listed.stdout and task.task_id in listed.stdout
    dl_id = (await bus.dead_letters())[0].dead_letter.dead_letter_id
    shown = run_cli("dead-letter", "show", dl_id[:8], nats_url=nats_url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["original"]["task_id"] == task.task_id

    # the fix: the router learns the worker type, and a worker for it runs
    router.terminate()
    late = echo_worker(tmp_path, "late")
    loom_procs.router(echo, late)
    loom_procs.worker(late)
    replayed = run_cli("dead-letter", "replay", dl_id, nats_url=nats_url)
    assert replayed.returncode == 0, replayed.stderr
    (done,) = await collect(sub, 1)
    assert done["task_id"] == task.task_id and done["status"] == "completed"
    assert await bus.dead_letters() == []
    missing = run_cli("dead-letter", "show", dl_id, nats_url=nats_url)
    assert missing.returncode == 1


async def test_replay_all_by_reason_keeps_the_others(
    loom_procs: LoomProcesses, bus: Bus, nats_url: str
) -> None:
    for i, reason in enumerate(
        [DeadLetterReason.RATE_LIMITED, DeadLetterReason.RATE_LIMITED, DeadLetterReason.TIMEOUT]
    ):
        t = TaskMessage(worker_type="echo", payload={"i": i})
        await bus.publish_dead_letter(
            build_dead_letter(
                reason,
                "test",
                subject=task_subject("echo", "local"),
                data=t.to_bytes(),
                origin=f"T:{i}",
                role="test",
                task=t,
            )
        )
    out = run_cli("dead-letter", "replay", "--all", "--reason", "rate_limited", nats_url=nats_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("replayed") == 2
    assert [d.dead_letter.reason for d in await bus.dead_letters()] == [DeadLetterReason.TIMEOUT]
    lag = await bus.stream_messages(STREAM_TASKS)
    assert lag == 2
    assert (
        await bus.consumer_info(
            STREAM_TASKS,
            await bus.ensure_worker_consumer("echo", "local", ack_wait=5, max_deliver=1, max_ack_pending=10),
        )
    ).num_pending == 2
    assert worker_consumer("echo", "local") == "worker-echo-local"


async def test_same_failure_is_stored_once(bus: Bus) -> None:
    t = TaskMessage(worker_type="echo")
    for _ in range(3):  # e.g. a redelivered failure reported again
        await bus.publish_dead_letter(
            build_dead_letter(
                DeadLetterReason.TASK_FAILED,
                "x",
                subject="loom.tasks.echo.local",
                data=t.to_bytes(),
                origin="LOOM_TASKS:7",
                role="worker",
                task=t,
            )
        )
    assert len(await bus.dead_letters()) == 1
