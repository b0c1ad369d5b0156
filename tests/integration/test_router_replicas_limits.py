"""Exact limits across real ``loom router`` processes: 1, 2 and 3 replicas, and one SIGKILLed mid-run.

The routers share a limit of 600 requests per minute over 2 s windows (20 per window). Far more
tasks than that are queued up front, so the routers are saturated; no worker runs, so every
admitted task stays in the worker stream, where the time JetStream stored it says which window
admitted it. Each window must hold at most 20 and the complete windows together at least 95% of
their limit, with a dead replica's share taken up by the living. Tasks in flight: a SIGKILLed
replica's slots come back to the other when its lease ends, and only then.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

import pytest
from tests.support.processes import LoomProcess, LoomProcesses, bus, echo_worker, loom_procs, poll, write_yaml

from loom.bus import Bus
from loom.messages import TaskMessage
from loom.subjects import STREAM_TASKS

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]

WINDOW = 2.0
PER_MINUTE = 600
PER_WINDOW = int(PER_MINUTE * WINDOW / 60)  # 20
WINDOWS = 7


def start_routers(tmp: Path, procs: LoomProcesses, n: int) -> list[LoomProcess]:
    pol = write_yaml(
        tmp,
        "policy",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "default"},
            "spec": {
                "replicas": n,
                "rateLimits": {"local": {"requestsPerMinute": PER_MINUTE}},
                "onLimit": {"maxWaitSeconds": 3600},
            },
        },
    )
    echo = echo_worker(tmp, "echo")
    extra = (
        *("--limits", "shared", "--limit-window-seconds", str(WINDOW)),
        *("--max-in-flight", "20", "--ack-wait", "2", "--no-worker-wait", "0"),
    )
    routers = [procs.router(pol, echo, extra=extra, ready=False) for _ in range(n)]
    return [r.wait_ready() for r in routers]


async def admitted_per_window(b: Bus) -> Counter[int]:
    """Tasks in the worker stream by the window their router stored them in."""
    out: Counter[int] = Counter()
    seq = 1
    while (stored := await b.next_stored(STREAM_TASKS, "loom.tasks.echo.local", seq)) is not None:
        assert stored.stored_at is not None
        out[math.floor(stored.stored_at.timestamp() / WINDOW)] += 1
        seq = stored.seq + 1
    return out


@pytest.mark.parametrize(
    "replicas,kill", [(1, False), (2, False), (3, False), (3, True)], ids=["1", "2", "3", "3-kill"]
)
async def test_admitted_per_window_stays_within_the_limit_and_reaches_it(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus, replicas: int, kill: bool
) -> None:
    routers = start_routers(tmp_path, loom_procs, replicas)
    tasks = [
        TaskMessage(worker_type="echo", model_tier="local", tenant="t")
        for _ in range(PER_WINDOW * (WINDOWS + 5))
    ]
    await asyncio.gather(*(bus.publish_task(t) for t in tasks))
    start = time.time()
    if kill:  # mid-window, with tasks held by the one that dies
        first = (math.floor(start / WINDOW) + 3) * WINDOW + WINDOW / 2
        await asyncio.sleep(first - time.time())
        routers[0].kill()
    await asyncio.sleep((math.floor(start / WINDOW) + WINDOWS + 1) * WINDOW - time.time())
    end = time.time()
    for r in routers:
        r.terminate()
    counts = await admitted_per_window(bus)
    assert counts and max(counts.values()) <= PER_WINDOW, counts
    full = range(math.ceil(start / WINDOW), math.floor(end / WINDOW))
    assert len(full) >= WINDOWS - 1
    reached = sum(counts[w] for w in full)
    assert reached >= 0.95 * PER_WINDOW * len(full), (reached, [counts[w] for w in full])


async def test_a_killed_replicas_in_flight_slots_come_back_when_its_lease_ends(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    pol = write_yaml(
        tmp_path,
        "policy",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "default"},
            "spec": {
                "replicas": 2,
                "rateLimits": {"local": {"maxConcurrent": 2}},
                "onLimit": {"maxWaitSeconds": 3600},
            },
        },
    )
    echo = echo_worker(tmp_path, "echo")
    extra = (
        *(
            "--limit-lease-seconds",
            "3",
            "--inflight-lease-seconds",
            "3600",
        ),  # only the shared lease frees slots
        *("--max-in-flight", "20", "--ack-wait", "2", "--no-worker-wait", "0"),
    )
    routers = [loom_procs.router(pol, echo, extra=extra, ready=False) for _ in range(2)]
    for r in routers:
        r.wait_ready()
    for _ in range(10):
        await bus.publish_task(TaskMessage(worker_type="echo", model_tier="local", tenant="t"))

    async def stored() -> int:  # no worker runs: every dispatched task stays, and holds its slot
        return await bus.stream_messages(STREAM_TASKS)

    await poll(lambda: sum(r.metric("loom_tier_in_flight", tier="local") for r in routers) == 2)
    await asyncio.sleep(3 * 2)  # two leases: the holder, alive, keeps renewing
    assert await stored() == 2
    holder = max(routers, key=lambda r: r.metric("loom_tier_in_flight", tier="local"))
    held = int(holder.metric("loom_tier_in_flight", tier="local"))  # 1 or 2: whoever asked first
    holder.kill()
    other = next(r for r in routers if r is not holder)

    async def freed() -> bool:
        return await stored() >= 2 + held

    await poll(freed, timeout=30)
    await asyncio.sleep(3)  # one more lease: nothing else comes free
    assert await stored() == 2 + held  # the dead replica's slots came back, once
    assert other.metric("loom_tier_in_flight", tier="local") == 2
