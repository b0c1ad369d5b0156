"""Routed no-op tasks, timed the same way by every benchmark that measures the spine."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid

from loom.bus import Bus
from loom.messages import TaskMessage
from loom.subjects import TASKS_INCOMING


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_batch(bus: Bus, count: int, *, result_timeout: float = 10.0) -> tuple[float, int]:
    """(tasks/s from the first publish to the last result, tasks whose result never came)."""
    key = uuid.uuid4().hex
    sub = await bus.subscribe_results(key)
    bodies = [
        TaskMessage(parent_task_id=key, worker_type="noop", model_tier="local").to_bytes()
        for _ in range(count)
    ]
    t0 = time.perf_counter()
    for start in range(0, count, 500):
        await asyncio.gather(*(bus.js_publish(TASKS_INCOMING, b) for b in bodies[start : start + 500]))
    ids: set[str] = set()
    last = t0
    try:
        while len(ids) < count:
            ids.add(json.loads(await sub.get(timeout=result_timeout))["task_id"])
            last = time.perf_counter()
    except TimeoutError:
        pass
    finally:
        await sub.close()
    return count / (last - t0), count - len(ids)


async def latencies(bus: Bus, count: int) -> dict[str, float]:
    """p50 and p99 milliseconds of ``count`` tasks sent one at a time, each waiting for its result."""
    key = uuid.uuid4().hex
    sub = await bus.subscribe_results(key)
    lat: list[float] = []
    try:
        for _ in range(count):
            body = TaskMessage(parent_task_id=key, worker_type="noop", model_tier="local").to_bytes()
            t = time.perf_counter()
            await bus.js_publish(TASKS_INCOMING, body)
            await sub.get(timeout=10)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        await sub.close()
    return {"p50": statistics.median(lat), "p99": pct(lat, 0.99)}
