"""Rate limits of the router, pure: token buckets, concurrency caps and the queue of waiting tasks.

Time comes from an injected clock (seconds, monotonic) so tests drive it by hand.

* requests per minute and tokens per minute are token buckets that hold one
  minute's worth and refill continuously; a request bigger than the whole bucket
  is admitted when the bucket is full (and leaves it in debt) so it cannot wait forever;
* max concurrent counts tasks dispatched and not yet answered;
* this is exact for one router replica. With more, the limits are shared through NATS
  (:mod:`loom.router.shared_limits` builds the limit sets through ``factory``); split mode, where
  each replica enforces ``limit / replicas`` on its own, is kept only when asked for, and refuses a
  ``maxConcurrent`` below the number of replicas (a floor of one each would pass the limit);
* tenant limits apply on top of the tier limits. A tenant listed in the overrides
  has its own limit set; every other tenant draws on ONE shared limit set of the
  default limits (``defaultScope: shared``), so inventing tenant names gains
  nothing. A limit set is dropped once it has been full and unused for
  ``tenant_idle_seconds`` (it would be rebuilt full anyway), so many tenants do not
  mean unbounded memory.

A task that does not fit waits. Waiting tasks are admitted by priority (high
first), then age; a task never overtakes an earlier or higher-priority task
that waits for one of the same limits. A task waits *for* the limits that do not
fit it (not for every limit it is counted in), so a tenant waiting on its own
limit does not hold up another tenant whose limits have room, even on a shared
tier. A task that waited ``max_wait`` expires.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loom.api.router_policy import RateLimit, RouterPolicySpec
from loom.clock import Clock


class Bucket(Protocol):
    """Requests or tokens over time: a local :class:`TokenBucket` or a shared window's grants."""

    @property
    def capacity(self) -> float: ...
    def available(self, now: float) -> float: ...
    def fits(self, amount: float, now: float) -> bool: ...
    def take(self, amount: float, now: float) -> None: ...
    def give(self, amount: float, now: float, since: float | None = None) -> None: ...
    def time_until(self, amount: float, now: float) -> float: ...
    def settled(self, now: float) -> bool: ...


class Slots(Protocol):
    """Tasks in flight: a local :class:`Concurrency` or a share of a shared one."""

    used: int

    @property
    def limit(self) -> int: ...
    def fits(self) -> bool: ...


#: The key of the one limit set all tenants not listed in the overrides share (no tenant name
#: can be ``*``: tenant names are subject tokens).
SHARED_BUDGET = "*"


class TokenBucket:
    """Holds up to ``capacity`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: float, rate: float, now: float):
        self.capacity = capacity
        self.rate = rate
        self.level = capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def available(self, now: float) -> float:
        """Tokens available now (negative while in debt)."""
        self._refill(now)
        return self.level

    def fits(self, amount: float, now: float) -> bool:
        """Whether ``amount`` can be taken now (oversized amounts need a full bucket)."""
        self._refill(now)
        return self.level >= min(amount, self.capacity) - 1e-9

    def take(self, amount: float, now: float) -> None:
        """Take tokens (may leave the bucket in debt)."""
        self._refill(now)
        self.level -= amount

    def give(self, amount: float, now: float, since: float | None = None) -> None:
        """Return tokens (up to capacity); ``since`` (when they were taken) does not matter here."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def time_until(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits."""
        self._refill(now)
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 1e-9 else need / self.rate

    def settled(self, now: float) -> bool:
        """Full: dropping it loses nothing (it would be rebuilt full)."""
        return self.available(now) >= self.capacity


class Concurrency:
    """At most ``limit`` held at once; released by events, never by time."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def fits(self) -> bool:
        """Whether one more can be held."""
        return self.used < self.limit


@dataclass(eq=False)
class LimitSet:
    """The limits of one tier or one tenant (this replica's share)."""

    name: str
    requests: Bucket | None = None
    tokens: Bucket | None = None
    concurrency: Slots | None = None
    #: Clock time of the last admission.
    last_used: float = 0.0
    #: Admitted dispatches whose release is still to come (concurrency or token corrections).
    held: int = 0

    @classmethod
    def from_spec(cls, name: str, spec: RateLimit | None, replicas: int, now: float) -> LimitSet:
        """This replica's share of ``spec`` when each replica enforces ``limit / replicas`` on its own;
        ValueError when ``maxConcurrent`` is below ``replicas`` (no share of it could be exact)."""
        out = cls(name, last_used=now)
        if spec is None:
            return out
        if spec.max_concurrent and spec.max_concurrent < replicas:
            raise ValueError(
                f"{name}: maxConcurrent {spec.max_concurrent} cannot be split over {replicas} router "
                "replicas (each would still admit one); share the limits through NATS (--limits shared)"
            )
        if spec.requests_per_minute:
            cap = spec.requests_per_minute / replicas
            out.requests = TokenBucket(cap, cap / 60.0, now)
        if spec.tokens_per_minute:
            cap = spec.tokens_per_minute / replicas
            out.tokens = TokenBucket(cap, cap / 60.0, now)
        if spec.max_concurrent:
            out.concurrency = Concurrency(spec.max_concurrent // replicas)
        return out

    @property
    def empty(self) -> bool:
        """True when nothing is limited."""
        return self.requests is None and self.tokens is None and self.concurrency is None

    def fits(self, tokens: float, now: float) -> bool:
        """Whether one request of ``tokens`` tokens fits every limit now."""
        return (
            (self.requests is None or self.requests.fits(1, now))
            and (self.tokens is None or self.tokens.fits(tokens, now))
            and (self.concurrency is None or self.concurrency.fits())
        )

    def idle_since(self, since: float, now: float) -> bool:
        """Unused since ``since``, nothing held and every bucket full: dropping it loses nothing."""
        return (
            self.last_used <= since
            and self.held == 0
            and (self.concurrency is None or self.concurrency.used == 0)
            and all(b is None or b.settled(now) for b in (self.requests, self.tokens))
        )

    def take(self, tokens: float, now: float) -> None:
        self.last_used = now
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(tokens, now)
        if self.concurrency is not None:
            self.concurrency.used += 1

    def wait_time(self, tokens: float, now: float) -> float:
        """Seconds until the time-based limits fit (inf when only a release can help)."""
        t = 0.0
        if self.requests is not None:
            t = max(t, self.requests.time_until(1, now))
        if self.tokens is not None:
            t = max(t, self.tokens.time_until(tokens, now))
        if self.concurrency is not None and not self.concurrency.fits():
            return math.inf
        return t


@dataclass(eq=False)
class Ticket:
    """What an admitted request holds, to be released when its result comes back."""

    tier: str
    tenant: str
    tokens: float
    limits: tuple[LimitSet, ...]
    #: Clock time of the admission (a shared window gives tokens back only to the window they came from).
    at: float = 0.0
    released: bool = False
    #: Holds a place in its limit sets until released (see :meth:`Limiter.needs_tracking`).
    tracked: bool = False


@dataclass(eq=False)
class Request:
    """A task asking for capacity."""

    tier: str
    tenant: str
    tokens: float
    priority: int
    arrived: float
    deadline: float
    item: Any = None
    seq: int = 0
    limits: tuple[LimitSet, ...] = field(default=())
    #: While waiting: the limit sets it waits for (full ones, or ones an earlier task waits for).
    blocked_by: tuple[LimitSet, ...] = field(default=())

    def sort_key(self) -> tuple[int, float, int]:
        return (-self.priority, self.arrived, self.seq)


#: Builds the limit set of a name from its spec at a clock time (e.g. a shared one).
LimitSetFactory = Callable[[str, RateLimit | None, float], LimitSet]


class Limiter:
    """Every limit of a RouterPolicy for one router replica.

    Without ``factory`` each replica enforces ``limit / replicas`` on its own (exact with one replica);
    ``factory`` builds the limit sets otherwise (:class:`loom.router.shared_limits.SharedLimits`).
    Every limit the policy names is built once up front, so one that cannot work fails here."""

    def __init__(
        self,
        policy: RouterPolicySpec,
        clock: Clock,
        tenant_idle_seconds: float = 300.0,
        factory: LimitSetFactory | None = None,
    ):
        self.clock = clock
        self.tenant_idle_seconds = tenant_idle_seconds
        self.replicas = policy.replicas
        self._factory: LimitSetFactory = factory or (
            lambda name, spec, now: LimitSet.from_spec(name, spec, self.replicas, now)
        )
        now = clock()
        self.tiers: dict[str, LimitSet] = {
            tier: self._factory(f"tier:{tier}", policy.rate_limits.get(tier), now)
            for tier in set(policy.tier_names) | set(policy.rate_limits)
        }
        self._tenant_default = policy.tenant_limits.default
        self._tenant_overrides = policy.tenant_limits.overrides
        for name, spec in [("tenant:*", self._tenant_default), *policy.tenant_limits.overrides.items()]:
            self._factory(name if name == "tenant:*" else f"tenant:{name}", spec, now)
        self._shared_default = policy.tenant_limits.default_scope == "shared"
        #: Limit sets by budget key (:meth:`budget_of`).
        self.tenants: dict[str, LimitSet] = {}

    def budget_of(self, tenant: str) -> str | None:
        """Whose limits a tenant draws on: its own name when listed (or when the default is per
        tenant), :data:`SHARED_BUDGET` for the unlisted tenants sharing the default, None when unlimited."""
        if tenant in self._tenant_overrides:
            return tenant
        if self._tenant_default is None:
            return None
        return SHARED_BUDGET if self._shared_default else tenant

    def limits_for(self, tier: str, tenant: str) -> tuple[LimitSet, ...]:
        """The non-empty limit sets a request of (tier, tenant) must fit."""
        out: list[LimitSet] = []
        ts = self.tiers.get(tier)
        if ts is None:
            ts = self.tiers[tier] = LimitSet(f"tier:{tier}")
        if not ts.empty:
            out.append(ts)
        key = self.budget_of(tenant)
        if key is not None:
            tl = self.tenants.get(key)
            if tl is None:
                spec = self._tenant_overrides.get(tenant, self._tenant_default)
                tl = self.tenants[key] = self._factory(f"tenant:{key}", spec, self.clock())
            if not tl.empty:
                out.append(tl)
        return tuple(out)

    def needs_tracking(self, limits: tuple[LimitSet, ...]) -> bool:
        """Whether the result of a dispatch matters (concurrency to release, tokens to correct)."""
        return any(ls.concurrency is not None or ls.tokens is not None for ls in limits)

    def try_acquire(
        self, tier: str, tenant: str, tokens: float, limits: tuple[LimitSet, ...] | None = None
    ) -> Ticket | None:
        """Take capacity for one request if every limit has room; None otherwise."""
        limits = self.limits_for(tier, tenant) if limits is None else limits
        now = self.clock()
        if not all(ls.fits(tokens, now) for ls in limits):
            return None
        tracked = self.needs_tracking(limits)
        for ls in limits:
            ls.take(tokens, now)
            if tracked:
                ls.held += 1
        return Ticket(tier, tenant, tokens, limits, at=now, tracked=tracked)

    def release(self, ticket: Ticket, actual_tokens: float | None = None) -> None:
        """The result is back: free concurrency and correct the token estimate by the real usage."""
        if ticket.released:
            return
        ticket.released = True
        now = self.clock()
        for ls in ticket.limits:
            if ticket.tracked:
                ls.held = max(0, ls.held - 1)
            if ls.concurrency is not None:
                ls.concurrency.used = max(0, ls.concurrency.used - 1)
            if ls.tokens is not None and actual_tokens is not None:
                diff = ticket.tokens - actual_tokens
                if diff > 0:
                    ls.tokens.give(diff, now, since=ticket.at)
                elif diff < 0:
                    ls.tokens.take(-diff, now)

    def release_answered_by(self, ticket: Ticket, tier: str, actual_tokens: float) -> None:
        """The result came from fallback ``tier``: the ticket's own tier gets its token estimate back
        (its unavailable provider spent none), ``tier`` and the other limits are charged the tokens
        used. Requests stay counted where they were admitted."""
        if ticket.released:
            return
        self.release(ticket, 0.0)
        now = self.clock()
        own = f"tier:{ticket.tier}"
        answered = self.tiers.get(tier)
        charged = [ls for ls in ticket.limits if ls.name != own]
        if answered is not None:
            charged.append(answered)
        for ls in charged:
            if ls.tokens is not None:
                ls.tokens.take(actual_tokens, now)

    def evict_idle_tenants(self, keep: Callable[[LimitSet], bool] = lambda _: False) -> int:
        """Drop tenant limit sets idle for ``tenant_idle_seconds``, unless ``keep`` says one is in use."""
        now = self.clock()
        since = now - self.tenant_idle_seconds
        idle = [t for t, ls in self.tenants.items() if ls.idle_since(since, now) and not keep(ls)]
        for tenant in idle:
            del self.tenants[tenant]
        return len(idle)


@dataclass
class PumpResult:
    """What one pass over the waiting queue decided."""

    admitted: list[tuple[Request, Ticket]]
    expired: list[Request]
    next_wake: float | None  # clock time worth looking again (refill or deadline), None when only events help


class AdmissionQueue:
    """Admission with backpressure: fast path when nothing waits, else priority-ordered waiting."""

    def __init__(self, limiter: Limiter, max_wait: float):
        self.limiter = limiter
        self.clock = limiter.clock
        self.max_wait = max_wait
        self.waiting: list[tuple[tuple[int, float, int], Request]] = []
        #: Waiting requests counted in each limit set (keeps the set from eviction).
        self._waiters_on: dict[int, int] = {}
        #: Waiting requests that wait for each limit set (a newcomer counted in it queues behind them).
        self._blocked_on: dict[int, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self.waiting)

    def request(self, tier: str, tenant: str, tokens: float, priority: int, item: Any = None) -> Request:
        """A request arriving now."""
        now = self.clock()
        self._seq += 1
        return Request(
            tier,
            tenant,
            tokens,
            priority,
            now,
            now + self.max_wait,
            item,
            self._seq,
            self.limiter.limits_for(tier, tenant),
        )

    def submit(self, req: Request) -> Ticket | None:
        """Admit now if every limit fits and nothing waits for one of them; else enqueue (returns None)."""
        if not req.limits:
            return Ticket(req.tier, req.tenant, req.tokens, ())
        now = self.clock()
        blocking = tuple(
            ls for ls in req.limits if self._blocked_on.get(id(ls)) or not ls.fits(req.tokens, now)
        )
        if not blocking:
            ticket = self.limiter.try_acquire(req.tier, req.tenant, req.tokens, req.limits)
            if ticket is not None:
                return ticket
            blocking = req.limits
        key = req.sort_key()
        bisect.insort(self.waiting, (key, req), key=lambda e: e[0])
        _count(self._waiters_on, req.limits, +1)
        self._block(req, blocking)
        return None

    def _block(self, req: Request, limits: tuple[LimitSet, ...]) -> None:
        """From now on ``req`` waits for ``limits``."""
        _count(self._blocked_on, req.blocked_by, -1)
        req.blocked_by = limits
        _count(self._blocked_on, limits, +1)

    def _remove(self, idx: int) -> Request:
        _, req = self.waiting.pop(idx)
        _count(self._waiters_on, req.limits, -1)
        self._block(req, ())
        return req

    def evict_idle_tenants(self) -> int:
        """Drop idle tenant limit sets that no waiting request refers to; returns how many went."""
        return self.limiter.evict_idle_tenants(keep=lambda ls: id(ls) in self._waiters_on)

    def cancel(self, req: Request) -> bool:
        """Drop a waiting request (e.g. the router is shutting down)."""
        for i, (_, r) in enumerate(self.waiting):
            if r is req:
                self._remove(i)
                return True
        return False

    def pump(self) -> PumpResult:
        """Admit what fits in priority order, expire what waited too long, say when to look again."""
        now = self.clock()
        admitted: list[tuple[Request, Ticket]] = []
        expired: list[Request] = []
        blocked: set[int] = set()  # limit sets an earlier waiting task waits for
        next_wake: float | None = None
        i = 0
        while i < len(self.waiting):
            req = self.waiting[i][1]
            if now >= req.deadline:
                expired.append(self._remove(i))
                continue
            behind = tuple(ls for ls in req.limits if id(ls) in blocked)
            if behind:
                self._block(req, behind)
                next_wake = req.deadline if next_wake is None else min(next_wake, req.deadline)
                i += 1
                continue
            ticket = self.limiter.try_acquire(req.tier, req.tenant, req.tokens, req.limits)
            if ticket is not None:
                self._remove(i)
                admitted.append((req, ticket))
                continue
            full = tuple(ls for ls in req.limits if not ls.fits(req.tokens, now)) or req.limits
            wait = max((ls.wait_time(req.tokens, now) for ls in full), default=0.0)
            wake = min(req.deadline, now + max(wait, 0.001)) if math.isfinite(wait) else req.deadline
            next_wake = wake if next_wake is None else min(next_wake, wake)
            self._block(req, full)
            blocked.update(id(ls) for ls in full)  # only what it waits for: others may still pass
            i += 1
        return PumpResult(admitted, expired, next_wake)


def _count(counts: dict[int, int], limits: tuple[LimitSet, ...], delta: int) -> None:
    """Add ``delta`` to the count of each limit set, dropping counts that reach zero."""
    for ls in limits:
        left = counts.get(id(ls), 0) + delta
        if left > 0:
            counts[id(ls)] = left
        else:
            counts.pop(id(ls), None)
