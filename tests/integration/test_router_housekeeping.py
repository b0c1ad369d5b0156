"""The router's housekeeping follows its injected clock: a dispatch whose result never comes back
gives its capacity back, and an idle tenant's limit set goes, when the hand-driven clock passes the
interval, not before, and without waiting for it in real time. The router runs in this process on a
real nats-server; dispatches are counted in the worker stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from tests.support.processes import bus, poll

from loom.api.router_policy import RouterConfig, RouterPolicySpec
from loom.bus import Bus
from loom.messages import TaskMessage
from loom.router.service import RouterOptions, RouterService
from loom.subjects import STREAM_TASKS

pytestmark = pytest.mark.integration
__all__ = ["bus"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@contextlib.asynccontextmanager
async def router(
    b: Bus, clock: Clock, options: RouterOptions, **policy: object
) -> AsyncIterator[RouterService]:
    spec = RouterPolicySpec.model_validate(policy)
    service = RouterService(b, RouterConfig(policy=spec), options, clock=clock)
    stop = asyncio.Event()
    run = asyncio.create_task(service.run(stop))
    try:
        await poll(lambda: service.ready)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)


async def advance(service: RouterService, clock: Clock, seconds: float) -> None:
    """Move the clock, wake the router and return once it has looked at the new time."""
    clock.t += seconds
    service.wake.set()
    await poll(lambda: not service.wake.is_set(), timeout=5, interval=0.001)


async def stored(b: Bus, n: int) -> bool:
    return await b.stream_messages(STREAM_TASKS) == n


async def publish(b: Bus, tenant: str, n: int) -> None:
    for _ in range(n):
        await b.publish_task(TaskMessage(worker_type="echo", model_tier="local", tenant=tenant))


async def test_an_unanswered_dispatch_frees_its_slot_when_the_clock_passes_the_lease_check(bus: Bus) -> None:
    """Lease 5 s, checked every ack_wait / 3 = 100 s of the router's clock: past the lease but before
    the check the slot stays taken; at the check it is given back and the waiting task goes out."""
    clock = Clock()
    options = RouterOptions(no_worker_wait=0, dispatch_lease=5.0, ack_wait=300.0, evict_interval=10_000.0)
    policy = {"rateLimits": {"local": {"maxConcurrent": 1}}, "onLimit": {"maxWaitSeconds": 3600}}
    async with router(bus, clock, options, **policy) as service:
        await publish(bus, "a", 2)  # no worker answers: one goes out, one waits for the slot
        await poll(lambda: len(service.queue.waiting) == 1)
        await poll(lambda: stored(bus, 1))  # the dispatch is published after its slot is taken
        assert len(service.dispatched) == 1

        await advance(service, clock, 50)  # the lease ran out, the next check is at +100
        assert len(service.dispatched) == 1 and len(service.queue.waiting) == 1
        assert await bus.stream_messages(STREAM_TASKS) == 1

        await advance(service, clock, 50)
        await poll(lambda: not service.queue.waiting)
        await poll(lambda: stored(bus, 2))
        assert len(service.dispatched) == 1  # the second task holds the slot now


async def test_an_idle_tenant_limit_set_goes_when_the_clock_passes_the_eviction_interval(bus: Bus) -> None:
    """Idle after 300 s (unused, bucket full), dropped at the next eviction, every 600 s of the
    router's clock; before that the set stays however idle it is."""
    clock = Clock()
    options = RouterOptions(no_worker_wait=0, evict_interval=600.0)
    policy = {"tenantLimits": {"overrides": {"a": {"requestsPerMinute": 5}}}}
    async with router(bus, clock, options, **policy) as service:
        await publish(bus, "a", 1)
        await poll(lambda: "a" in service.limiter.tenants)
        await poll(lambda: stored(bus, 1))

        await advance(service, clock, 400)  # idle since +300, the next eviction is at +600
        assert "a" in service.limiter.tenants

        await advance(service, clock, 200)
        await poll(lambda: "a" not in service.limiter.tenants, timeout=5)
