"""Autoscaling never chases blocked work, on a real nats-server with real ``loom router`` and
``loom worker`` processes: tasks waiting on a tier's limit (or budget) wait at the router, so the
tier's consumer lag the scaler reads holds only what was admitted; a tier whose consumer does not
exist yet reads as no lag, not as the stream's size."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from tests.support.nats_server import NatsServer
from tests.support.processes import LoomProcesses, bus, echo_worker, loom_procs, poll, write_yaml

from loom.api import Autoscaling
from loom.bus import Bus
from loom.messages import TaskMessage
from loom.subjects import ROUTER_CONSUMER, STREAM_INCOMING, STREAM_TASKS, worker_consumer
from loom_operator.scaler import decide
from loom_operator.scaler_loop import fetch_lags

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]

SCALING = Autoscaling(min_replicas=1, max_replicas=10, target_lag=1, activation_lag=0)


async def test_a_limited_tier_and_a_missing_consumer_do_not_scale_to_max(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus, nats_server: NatsServer
) -> None:
    echo = echo_worker(tmp_path, "echo")
    ghost = echo_worker(tmp_path, "ghost", default_model_tier="standard")  # no worker ever runs
    policy = write_yaml(
        tmp_path,
        "policy",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "default"},
            "spec": {"rateLimits": {"local": {"maxConcurrent": 2}}, "onLimit": {"maxWaitSeconds": 120}},
        },
    )
    loom_procs.router(policy, echo, ghost)
    loom_procs.worker(echo, "local")
    tasks = [TaskMessage(worker_type="echo", payload={"sleep": 3}) for _ in range(30)]
    tasks += [TaskMessage(worker_type="ghost", payload={}) for _ in range(5)]
    await asyncio.gather(*(bus.publish_task(t) for t in tasks))

    async def backlog_at_router() -> bool:
        return (await bus.consumer_info(STREAM_INCOMING, ROUTER_CONSUMER)).total >= 25

    await poll(backlog_at_router, timeout=20)
    await poll(lambda: _stored(bus, 7), timeout=20)  # 2 echo tasks in flight + 5 for the ghost tier

    async with httpx.AsyncClient(timeout=10) as http:
        lags = await fetch_lags(http, nats_server.monitor_url)
    echo_lag = lags[worker_consumer("echo", "local")]
    assert echo_lag is not None and echo_lag <= 2  # 28 more wait at the router, not on the tier
    assert worker_consumer("ghost", "standard") not in lags  # never created: no lag, as the scaler reads it
    now = time.monotonic()
    assert decide(echo_lag, 1, None, SCALING, now).desired <= 2
    ghost_lag = lags.get(worker_consumer("ghost", "standard"), 0)  # as the scaler loop reads a lag
    assert ghost_lag == 0 and decide(ghost_lag, 1, None, SCALING, now).desired == 1
    # what the scaler would do were the waiting tasks counted: all the way up
    assert decide(30, 1, None, SCALING, now).desired == SCALING.max_replicas


async def _stored(b: Bus, n: int) -> bool:
    return await b.stream_messages(STREAM_TASKS) >= n
