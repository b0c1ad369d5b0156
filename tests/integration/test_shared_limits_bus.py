"""Shared limits on a real nats-server: three replicas' limiters draw on one Key-Value bucket.

Each "replica" is a Limiter + AdmissionQueue + SharedLimits in this process, as a router builds
them; the rounds against the bucket run by hand and the wall clock is driven by hand, so windows
and lease expiry are decided by the state in NATS, not by timing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from tests.support.processes import bus

from loom.api.router_policy import RouterPolicySpec
from loom.bus import Bus
from loom.router.limits import AdmissionQueue, Limiter, Request, Ticket
from loom.router.shared_limits import LIMITS_BUCKET, SharedLimits

pytestmark = pytest.mark.integration
__all__ = ["bus"]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Replica:
    shared: SharedLimits
    queue: AdmissionQueue
    admitted: list[Ticket]

    def ask(self, n: int) -> list[Request]:
        reqs = [self.queue.request("local", "t", 0, 1) for _ in range(n)]
        for r in reqs:
            ticket = self.queue.submit(r)
            if ticket is not None:
                self.admitted.append(ticket)
        return reqs

    async def round(self, kv: Any) -> None:
        """One round against the bucket, then admit what the local grants allow."""
        limiter = self.queue.limiter
        sets = [*limiter.tiers.values(), *limiter.tenants.values()]
        await self.shared.sync(kv, sets, [req for _, req in self.queue.waiting])
        self.admitted += [t for _, t in self.queue.pump().admitted]


def replicas(
    n: int, wall: Clock, lease: float = 15.0, window: float = 60.0, recheck: float = 0.0, **policy: object
) -> list[Replica]:
    """``recheck`` 0: every round by hand asks the bucket (a router looks again after 0.25 s)."""
    spec = RouterPolicySpec.model_validate({"replicas": n, **policy})
    out = []
    for _ in range(n):
        shared = SharedLimits(window_seconds=window, lease_seconds=lease, wall=wall, recheck_seconds=recheck)
        out.append(Replica(shared, AdmissionQueue(Limiter(spec, wall, factory=shared.limit_set), 3600), []))
    return out


async def test_three_replicas_never_hold_more_than_max_concurrent_and_a_dead_ones_slots_expire(
    bus: Bus,
) -> None:
    kv = await bus.key_value(LIMITS_BUCKET, ttl=3600)
    wall = Clock(1_000_000.0)
    a, b, c = replicas(3, wall, lease=15.0, rateLimits={"local": {"maxConcurrent": 2}})
    for r in (a, b, c):
        r.ask(2)
    for _ in range(3):
        await asyncio.gather(*(r.round(kv) for r in (a, b, c)))
    assert sum(len(r.admitted) for r in (a, b, c)) == 2  # the old floor of one each would admit 3

    # a releases one of its own: it gives the slot back and a waiting replica takes it
    holder = next(r for r in (a, b, c) if r.admitted)
    holder.queue.limiter.release(holder.admitted.pop())
    for _ in range(3):
        await asyncio.gather(*(r.round(kv) for r in (a, b, c)))
    held = [len(r.admitted) for r in (a, b, c)]
    assert sum(held) == 2

    # the replicas holding slots die (no more rounds, no releases); the third waits until their leases end
    dead = [r for r in (a, b, c) if r.admitted]
    alive = next(r for r in (a, b, c) if not r.admitted)
    wall.t += 14.0
    await alive.round(kv)
    assert alive.admitted == []
    wall.t += 1.5  # past the lease (15 s from the last renewal at most 15 s ago)
    await alive.round(kv)
    assert len(alive.admitted) == 2
    assert len(dead) >= 1


async def test_three_replicas_share_one_window_exactly(bus: Bus) -> None:
    kv = await bus.key_value(LIMITS_BUCKET, ttl=3600)
    wall = Clock(1_000_000.0)  # a window boundary (a multiple of 2)
    reps = replicas(
        3, wall, window=2.0, rateLimits={"local": {"requestsPerMinute": 600}}
    )  # 20 per 2 s window
    for r in reps:
        r.ask(15)
    for _ in range(4):  # concurrent rounds: compare-and-set conflicts between replicas are retried
        await asyncio.gather(*(r.round(kv) for r in reps))
    assert sum(len(r.admitted) for r in reps) == 20
    wall.t += 1.9
    await asyncio.gather(*(r.round(kv) for r in reps))
    assert sum(len(r.admitted) for r in reps) == 20  # still the same window
    wall.t += 0.1
    for _ in range(4):
        await asyncio.gather(*(r.round(kv) for r in reps))
    assert sum(len(r.admitted) for r in reps) == 40
    assert sum(len(r.queue) for r in reps) == 5


async def test_units_a_replica_no_longer_needs_go_back_to_the_window(bus: Bus) -> None:
    kv = await bus.key_value(LIMITS_BUCKET, ttl=3600)
    wall = Clock(1_000_000.0)
    a, b = replicas(2, wall, window=60.0, recheck=0.25, rateLimits={"local": {"requestsPerMinute": 10}})
    reqs = a.ask(6)
    limiter = a.queue.limiter
    sets = [*limiter.tiers.values(), *limiter.tenants.values()]
    await a.shared.sync(kv, sets, [req for _, req in a.queue.waiting])  # takes 6
    for r in reqs[2:]:  # four of its tasks leave before being admitted (expired, or the router stops)
        assert a.queue.cancel(r)
    a.admitted += [t for _, t in a.queue.pump().admitted]
    assert len(a.admitted) == 2  # and 4 units held unused
    b.ask(8)
    await b.round(kv)
    assert len(b.admitted) == 4  # 10 - 6 taken by a
    await a.round(kv)  # nothing waits on a: its 4 unused units go back
    await b.round(kv)
    assert len(b.admitted) == 4  # b saw the window full a moment ago and does not ask yet
    wall.t += b.shared.recheck_seconds
    await b.round(kv)
    assert len(b.admitted) == 8
    assert len(a.admitted) + len(b.admitted) == 10
