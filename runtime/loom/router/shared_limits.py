"""Admission state shared by every router replica: limits exact with N replicas, surviving any death.

Design. One JetStream Key-Value bucket (:data:`LIMITS_BUCKET`) holds, for each limited scope (a tier,
a listed tenant, the shared default tenant budget):

* requests and tokens per minute as one counter per fixed window of ``window_seconds`` (60 by
  default), aligned to wall time: key ``<scope>.requests.<window>`` holds the units granted in that
  window to all replicas together;
* max in flight as one record ``<scope>.slots``: ``{replica: [slots held, lease end]}``.

A replica changes a key only by compare-and-set on its revision (:func:`loom.bus.kv_swap`); a
conflict re-reads and tries again, so the units granted never pass the limit, whatever the number of
replicas. A replica takes units in *batches*: one round trip takes as many as its waiting tasks need,
then the admission queue (:mod:`loom.router.limits`: priority, waiting, expiry to a dead letter)
admits from what it holds exactly as the local limiter does. Under saturating load one round trip
admits a whole batch, so the cost per task stays small; a replica gives back units it holds and no
longer needs, so uneven load wastes nothing.

Death. Window units a replica took and had not used yet are lost for the rest of that window (the
limit is never passed; the loss is at most one batch). Slots are held under a lease the replica
renews every third of ``lease_seconds``; the others ignore an entry whose lease ended, so a dead
replica's in-flight reservations come back by expiry, not leaked, and a restarted replica starts
with a new identity.

Why not the alternatives. A compare-and-set per task is exact but costs a round trip per admission
and, under load, a storm of conflicts between replicas; each replica enforcing ``limit / replicas``
(the old way, still the local limiter's split) is wrong when a replica dies, when load is uneven,
and below one unit per replica; a central admission service is one more thing to run and to fail.

Windows, not buckets. The local limiter (one replica, the fast path) is a token bucket: it can pass a
minute's worth at once and then refills continuously. Shared windows pass at most the limit between
two window boundaries, and every replica agrees which window is current because windows are aligned
to wall time: replicas need clocks in sync (NTP) to a small part of a window.

The decisions (how much to take, give back, or hold) are pure functions here; the network is the
caller's: :class:`SharedLimits` runs them against the bucket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loom.api.router_policy import RateLimit
from loom.clock import Clock
from loom.router.limits import LimitSet

log = logging.getLogger(__name__)

#: The Key-Value bucket of the shared admission state.
LIMITS_BUCKET = "loom-router-limits"

#: Seconds a replica's slots stay held when it stops renewing them (it renews every third of that).
DEFAULT_LEASE_SECONDS = 15.0

#: Seconds of a shared limit window (requests and tokens per minute are scaled to it).
DEFAULT_WINDOW_SECONDS = 60.0


# -- pure decisions ------------------------------------------------------------------------------------

#: How a router keeps its limits: ``auto`` is ``local`` for one replica and ``shared`` for more.
LIMITS_MODES = ("auto", "local", "shared")


def limits_mode(mode: str, replicas: int) -> str:
    """``local`` (this process alone, each replica ``limit / replicas``) or ``shared`` (through NATS)."""
    if mode not in LIMITS_MODES:
        raise ValueError(f"limits mode must be one of {', '.join(LIMITS_MODES)}, got {mode!r}")
    if mode == "auto":
        return "local" if replicas == 1 else "shared"
    return mode


def window_of(wall: float, window_seconds: float) -> int:
    """The index of the window ``wall`` (seconds since the epoch) falls in; the same on every replica."""
    return math.floor(wall / window_seconds)


def per_window(per_minute: int, window_seconds: float, what: str) -> int:
    """Units a window of ``window_seconds`` allows for a limit of ``per_minute``; ValueError when that
    is less than one (nothing could ever pass)."""
    n = math.floor(per_minute * window_seconds / 60.0 + 1e-9)
    if n < 1:
        raise ValueError(
            f"{what} of {per_minute} per minute is less than one per {window_seconds:g}s window; "
            f"use a window of at least {math.ceil(60.0 / per_minute)}s"
        )
    return n


def window_take(total: int, limit: int, want: int, owed: int) -> int:
    """Units to add to a window counter at ``total``: what was already used beyond the grant
    (``owed``, always charged) plus as much of ``want`` as the limit leaves room for."""
    room = max(0, limit - total - owed)
    return owed + min(max(0, want), room)


def live_holders(holders: dict[str, list[float]], wall: float) -> dict[str, list[float]]:
    """The slot holders whose lease has not ended at ``wall``."""
    return {r: h for r, h in holders.items() if h[1] > wall and h[0] > 0}


def slots_to_hold(
    holders: dict[str, list[float]], me: str, limit: int, held: int, target: int, wall: float
) -> int:
    """How many slots this replica should hold: up to ``target`` (in flight plus waiting) within the
    room the other live holders leave; what it ``held`` already stays its own up to ``target``."""
    others = sum(int(h[0]) for r, h in live_holders(holders, wall).items() if r != me)
    return max(0, min(target, max(held, limit - others)))


def scope_key(name: str) -> str:
    """A Key-Value key token for a limit set's name (tenant names may hold characters keys cannot)."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=") or "_"


# -- what the admission queue draws on -------------------------------------------------------------------


class WindowGrants:
    """This replica's units of the current shared window; stands in for a token bucket in a LimitSet.

    ``granted`` units were taken from the shared counter, ``used`` of them admitted. The ``now``
    arguments (the limiter's clock) only say how long ago a ticket was admitted; windows follow
    ``wall``."""

    __slots__ = ("checked", "granted", "key", "limit", "used", "wall", "window", "window_seconds")

    def __init__(self, key: str, limit: int, window_seconds: float, wall: Clock):
        self.key = key
        self.limit = limit
        self.window_seconds = window_seconds
        self.wall = wall
        self.window = window_of(wall(), window_seconds)
        self.granted = 0.0
        self.used = 0.0
        #: (window, wall time) the shared counter was last seen full.
        self.checked: tuple[int, float] = (-1, 0.0)

    @property
    def capacity(self) -> float:
        return float(self.limit)

    def roll(self) -> int:
        """Start afresh when a new window began; returns the current window."""
        w = window_of(self.wall(), self.window_seconds)
        if w != self.window:
            self.window, self.granted, self.used = w, 0.0, 0.0
        return w

    def available(self, now: float) -> float:
        self.roll()
        return self.granted - self.used

    def fits(self, amount: float, now: float) -> bool:
        return self.available(now) >= min(amount, self.limit) - 1e-9

    def take(self, amount: float, now: float) -> None:
        self.roll()
        self.used += amount

    def give(self, amount: float, now: float, since: float | None = None) -> None:
        """Units back (an estimate above the real usage), only to the window they were taken in."""
        w = self.roll()
        if since is not None and window_of(self.wall() - (now - since), self.window_seconds) != w:
            return
        self.used -= amount

    def time_until(self, amount: float, now: float) -> float:
        """0 when it fits, else until the next window (units given back earlier wake the queue)."""
        if self.fits(amount, now):
            return 0.0
        return max(0.0, (self.window + 1) * self.window_seconds - self.wall())

    def settled(self, now: float) -> bool:
        """Holds no unused units (dropping it loses nothing)."""
        return self.available(now) <= 0


class SlotGrants:
    """This replica's share of a shared max-in-flight; stands in for ``Concurrency`` in a LimitSet."""

    __slots__ = ("_used", "checked", "granted", "key", "limit_total", "notify", "renew_at", "short")

    def __init__(self, key: str, limit: int, notify: Callable[[], None]):
        self.key = key
        self.limit_total = limit
        self.granted = 0
        self._used = 0
        self.notify = notify
        self.renew_at = 0.0
        #: Tasks waited for more slots than the last round could take, at wall time ``checked``.
        self.short = False
        self.checked = 0.0

    @property
    def limit(self) -> int:
        return self.granted

    @property
    def used(self) -> int:
        return self._used

    @used.setter
    def used(self, value: int) -> None:
        released = value < self._used
        self._used = value
        if released:
            self.notify()  # a slot may now go to a waiting task elsewhere

    def fits(self) -> bool:
        return self._used < self.granted


@dataclass
class Demand:
    """What the waiting tasks of one limit set need."""

    requests: int = 0
    tokens: float = 0.0
    slots: int = 0


class _Waiting(Protocol):
    """The part of an admission request the demand is computed from."""

    tokens: float
    limits: tuple[LimitSet, ...]


def demand_of(waiting: Iterable[_Waiting]) -> dict[int, Demand]:
    """Units the waiting requests need, by limit set (keyed by ``id``)."""
    out: dict[int, Demand] = {}
    for req in waiting:
        for ls in req.limits:
            d = out.get(id(ls))
            if d is None:
                d = out[id(ls)] = Demand()
            d.requests += 1
            d.tokens += req.tokens if ls.tokens is None else min(req.tokens, ls.tokens.capacity)
            d.slots += 1
    return out


@dataclass
class SharedLimits:
    """Builds shared limit sets for the :class:`~loom.router.limits.Limiter` and keeps them in step with
    the bucket (see the module docstring)."""

    window_seconds: float = DEFAULT_WINDOW_SECONDS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    replica: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    wall: Clock = time.time
    #: How often a replica whose tasks wait on a full shared limit looks again (others may give back).
    recheck_seconds: float = 0.25
    _poke: asyncio.Event = field(default_factory=asyncio.Event)

    def limit_set(self, name: str, spec: RateLimit | None, now: float) -> LimitSet:
        """A limit set whose limits are shared through the bucket (the Limiter's factory)."""
        out = LimitSet(name, last_used=now)
        if spec is None:
            return out
        scope = scope_key(name)
        if spec.requests_per_minute:
            n = per_window(spec.requests_per_minute, self.window_seconds, f"{name} requestsPerMinute")
            out.requests = WindowGrants(f"{scope}.requests", n, self.window_seconds, self.wall)
        if spec.tokens_per_minute:
            n = per_window(spec.tokens_per_minute, self.window_seconds, f"{name} tokensPerMinute")
            out.tokens = WindowGrants(f"{scope}.tokens", n, self.window_seconds, self.wall)
        if spec.max_concurrent:
            out.concurrency = SlotGrants(f"{scope}.slots", spec.max_concurrent, self.poke)
        return out

    def poke(self) -> None:
        """Something changed (tasks wait, a slot was released): look at the bucket soon."""
        self._poke.set()

    # -- rounds against the bucket ---------------------------------------------------------------------------

    async def run(
        self,
        kv: Any,
        sets: Callable[[], Iterable[LimitSet]],
        waiting: Callable[[], Iterable[_Waiting]],
        wake: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        """Take and give back units until ``stop``; set ``wake`` whenever units arrived or left."""
        while not stop.is_set():
            self._poke.clear()
            try:
                if await self.sync(kv, list(sets()), waiting()):
                    wake.set()
            except Exception as exc:  # NATS away: what is held stays held, the next round tries again
                log.warning("shared limits: round failed (%s); trying again", exc)
                await wait_event(stop, 1.0)
                continue
            await wait_any(self._poke, stop, self.next_round_in(list(sets())))
        with contextlib.suppress(Exception):  # hand back the slots no task uses; the rest expire
            await self.sync(kv, list(sets()), (), stopping=True)

    def next_round_in(self, sets: list[LimitSet]) -> float:
        """Seconds until a lease needs renewing or a full limit is worth a second look."""
        wall = self.wall()
        t = 1.0
        for ls in sets:
            c = ls.concurrency
            if isinstance(c, SlotGrants) and c.granted > 0:
                t = min(t, c.renew_at - wall)
            for b in (ls.requests, ls.tokens):
                if isinstance(b, WindowGrants) and b.checked[0] == b.window:
                    t = min(t, self.recheck_seconds)
            if isinstance(c, SlotGrants) and c.short:
                t = min(t, self.recheck_seconds)
        return max(0.001, t)

    async def sync(
        self, kv: Any, sets: list[LimitSet], waiting: Iterable[_Waiting], *, stopping: bool = False
    ) -> bool:
        """One round: for each shared limit, take what waiting tasks need, give back what nobody
        needs, renew leases. True when this replica's holdings changed."""
        demand = demand_of(waiting)
        jobs = []
        for ls in sets:
            d = demand.get(id(ls), Demand())
            if isinstance(ls.requests, WindowGrants):
                jobs.append(self._window(kv, ls.requests, d.requests))
            if isinstance(ls.tokens, WindowGrants):
                jobs.append(self._window(kv, ls.tokens, math.ceil(d.tokens)))
            if isinstance(ls.concurrency, SlotGrants):
                jobs.append(self._slots(kv, ls.concurrency, d.slots, stopping))
        if not jobs:
            return False
        return any(await asyncio.gather(*jobs))

    async def _window(self, kv: Any, pool: WindowGrants, want_units: int) -> bool:
        from loom.bus import kv_read, kv_swap

        w = pool.roll()
        spare = pool.granted - pool.used
        owed = math.ceil(max(0.0, -spare))
        want = max(0, want_units - math.floor(max(0.0, spare)))
        give = math.floor(spare) if want_units == 0 and spare >= 1 else 0
        if not (owed or want or give):
            return False
        recent = pool.checked[0] == w and self.wall() - pool.checked[1] < self.recheck_seconds
        if recent and not owed and not give:
            return False  # seen full a moment ago
        key = f"{pool.key}.{w}"
        if give:
            pool.granted -= give  # no longer ours before the bucket hears of it
        for _ in range(50):
            raw, rev = await kv_read(kv, key)
            total = int(raw or b"0")
            add = window_take(total, pool.limit, want, owed) if not give else 0
            new_total = max(0, total + add - give)
            if new_total == total:
                pool.checked = (w, self.wall())
                return False
            if await kv_swap(kv, key, str(new_total).encode(), rev):
                if pool.window == w:
                    pool.granted += add
                pool.checked = (w, self.wall()) if add - owed < want else (-1, 0.0)
                return add > owed or give > 0
        log.warning("shared limits: %s stayed contended; trying again next round", key)
        if give:
            pool.granted += give
        return False

    async def _slots(self, kv: Any, pool: SlotGrants, waiting: int, stopping: bool) -> bool:
        from loom.bus import kv_read, kv_swap

        target = pool.used + (0 if stopping else waiting)
        renew = pool.granted > 0 and self.wall() >= pool.renew_at and not stopping
        if target == pool.granted and not renew:
            pool.short = False
            return False
        if (
            target > pool.granted
            and not renew
            and pool.short
            and self.wall() - pool.checked < self.recheck_seconds
        ):
            return False  # none free a moment ago
        held_before = pool.granted
        if target < pool.granted:
            pool.granted = target  # give back locally first, so nothing is admitted from it meanwhile
        for _ in range(50):
            raw, rev = await kv_read(kv, pool.key)
            holders: dict[str, list[float]] = json.loads(raw) if raw else {}
            wall = self.wall()
            target = max(target, pool.used)
            keep = slots_to_hold(holders, self.replica, pool.limit_total, pool.granted, target, wall)
            pool.short, pool.checked = keep < target, wall
            if keep == pool.granted == held_before and not renew:
                return False  # nothing to take, nothing to give back, lease still fresh
            record = live_holders(holders, wall)
            if keep > 0:
                # when stopping, what is in flight stays held until the lease ends (its tasks still run)
                record[self.replica] = [keep, wall + self.lease_seconds]
            else:
                record.pop(self.replica, None)
            if await kv_swap(kv, pool.key, json.dumps(record, sort_keys=True).encode(), rev):
                pool.granted = keep
                pool.renew_at = wall + self.lease_seconds / 3 if keep > 0 else 0.0
                return keep != held_before
        log.warning("shared limits: %s stayed contended; trying again next round", pool.key)
        return pool.granted != held_before


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


async def wait_any(a: asyncio.Event, b: asyncio.Event, seconds: float) -> None:
    """Until ``a`` or ``b`` is set or ``seconds`` pass."""
    wa = asyncio.ensure_future(a.wait())
    wb = asyncio.ensure_future(b.wait())
    try:
        await asyncio.wait({wa, wb}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wa.cancel()
        wb.cancel()
