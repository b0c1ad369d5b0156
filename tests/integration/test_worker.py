"""The worker as a real process: crashes, late starts, drain on signals, metrics.

Its contracts, timeouts and retries run in-process in test_role_scenarios.py, on the in-memory bus
and on a real nats-server."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.processes import LoomProcesses, bus, collect, echo_worker, loom_procs, poll

from loom.bus import Bus
from loom.messages import TaskMessage
from loom.subjects import STREAM_TASKS, task_subject, worker_consumer

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


async def send(b: Bus, key: str, payload: dict[str, object], tier: str = "local") -> TaskMessage:
    """Straight to the worker subject (the router is not under test here)."""
    task = TaskMessage(parent_task_id=key, worker_type="echo", payload=payload)
    await b.publish_task(task, subject=task_subject("echo", tier))
    return task


async def test_killed_worker_task_is_finished_by_another(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    cfg = echo_worker(tmp_path, timeout_seconds=3)
    first = loom_procs.worker(cfg, extra=("--ack-grace-seconds", "0.5"))
    sub = await bus.subscribe_results("w1")
    task = await send(bus, "w1", {"sleep": 1.0})
    await poll(lambda: first.metric("loom_worker_tasks_in_flight") == 1)
    first.kill()
    second = loom_procs.worker(cfg, extra=("--ack-grace-seconds", "0.5"))
    (result,) = await collect(sub, 1, timeout=20)
    assert result["task_id"] == task.task_id
    assert result["status"] == "completed"
    assert result["output"]["pid"] == second.pid  # type: ignore[index]
    assert result["attempt"] == 2


async def test_task_waits_for_a_worker_to_start(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    cfg = echo_worker(tmp_path)
    loom_procs.router(cfg)
    sub = await bus.subscribe_results("w2")
    task = TaskMessage(parent_task_id="w2", worker_type="echo", payload={"x": 1})
    await bus.publish_task(task)
    await poll(lambda: _stored(bus, 1))
    with pytest.raises(TimeoutError):
        await sub.get(timeout=0.3)
    loom_procs.worker(cfg)
    (result,) = await collect(sub, 1)
    assert result["task_id"] == task.task_id and result["status"] == "completed"


async def _stored(b: Bus, n: int) -> bool:
    return await b.stream_messages(STREAM_TASKS) >= n


async def test_sigterm_finishes_in_flight_then_exits(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    cfg = echo_worker(tmp_path)
    worker = loom_procs.worker(cfg)
    sub = await bus.subscribe_results("w6")
    task = await send(bus, "w6", {"sleep": 0.5})
    await poll(lambda: worker.metric("loom_worker_tasks_in_flight") == 1)
    assert worker.terminate() == 0
    (result,) = await collect(sub, 1, timeout=5)
    assert result["task_id"] == task.task_id and result["status"] == "completed"
    # nothing taken after the signal: a task sent now stays queued
    await send(bus, "w6", {})
    lag = await bus.consumer_info(STREAM_TASKS, worker_consumer("echo", "local"))
    assert lag.num_pending == 1 and lag.num_ack_pending == 0


async def test_sigterm_hands_back_what_cannot_finish(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    cfg = echo_worker(tmp_path, timeout_seconds=60)
    first = loom_procs.worker(cfg, extra=("--drain-grace-seconds", "0.2"))
    sub = await bus.subscribe_results("w7")
    task = await send(bus, "w7", {"sleep": 2})
    await poll(lambda: first.metric("loom_worker_tasks_in_flight") == 1)
    assert first.terminate() == 0
    second = loom_procs.worker(cfg)
    # handed back with a nak, so redelivered at once (ack_wait here is 90 s)
    (result,) = await collect(sub, 1, timeout=15)
    assert result["task_id"] == task.task_id and result["output"]["pid"] == second.pid  # type: ignore[index]


async def test_metrics_count_tasks(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    cfg = echo_worker(tmp_path)
    worker = loom_procs.worker(cfg)
    labels = {"worker_type": "echo", "tier": "local"}
    assert worker.metric("loom_tasks_completed_total", **labels) == 0
    sub = await bus.subscribe_results("w8")
    for _ in range(5):
        await send(bus, "w8", {})
    await send(bus, "w8", {"fail": "no"})
    await collect(sub, 6)
    await poll(lambda: worker.metric("loom_tasks_completed_total", **labels) == 5)
    assert worker.metric("loom_tasks_received_total", **labels) == 6
    assert worker.metric("loom_tasks_failed_total", outcome="failed", **labels) == 1
    assert worker.metric("loom_task_duration_seconds_count", outcome="completed", **labels) == 5
    assert worker.metric("loom_dead_letters_total", reason="task_failed", role="worker") == 1
    await poll(lambda: worker.metric("loom_consumer_lag", consumer="worker-echo-local") == 0, timeout=10)
