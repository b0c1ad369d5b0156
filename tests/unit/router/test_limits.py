"""Rate limits with a hand-driven clock: what passes in a window, waiting order, expiry, corrections."""

from __future__ import annotations

import math

from loom.api.router_policy import DEFAULT_TENANT_REQUESTS_PER_MINUTE, RateLimit, RouterPolicySpec
from loom.router.limits import SHARED_BUDGET, AdmissionQueue, Limiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def make(clock: Clock, max_wait: float = 30.0, **policy: object) -> AdmissionQueue:
    return AdmissionQueue(Limiter(RouterPolicySpec.model_validate(policy), clock), max_wait)


def admitted_in(q: AdmissionQueue, clock: Clock, seconds: float, step: float = 0.1, tokens: float = 0) -> int:
    """Offer one request per step for ``seconds``; count how many got in at once."""
    n = 0
    for _ in range(round(seconds / step)):
        req = q.request("local", "default", tokens, 1)
        if q.submit(req) is not None:
            n += 1
        else:
            assert q.cancel(req)
        clock.advance(step)
    return n


def test_token_bucket_refills_continuously_and_allows_one_oversized() -> None:
    b = TokenBucket(10, 1.0, now=0)
    assert b.fits(10, 0) and b.fits(10.5, 0)  # oversized needs only a full bucket
    b.take(25, 0)
    assert b.available(0) == -15
    assert b.time_until(1, 0) == 16
    assert not b.fits(1, 15.9) and b.fits(1, 16.0)
    b.give(100, 16)
    assert b.available(16) == 10


def test_requests_per_minute_holds_over_a_window() -> None:
    clock = Clock()
    q = make(clock, rateLimits={"local": {"requestsPerMinute": 60}})
    # one minute's worth at once, then one per second
    assert admitted_in(q, clock, 0.5) == 5
    clock.t = 2000.0
    q = make(clock, rateLimits={"local": {"requestsPerMinute": 60}})
    assert admitted_in(q, clock, 120, step=0.05) in (60 + 120, 60 + 119)


def test_each_replica_enforces_its_share() -> None:
    clock = Clock()
    q = make(clock, replicas=4, rateLimits={"local": {"requestsPerMinute": 40, "maxConcurrent": 9}})
    assert sum(q.submit(q.request("local", "t", 0, 1)) is not None for _ in range(20)) == 2  # min(40/4, 9//4)


def test_concurrency_waits_for_release_in_priority_order() -> None:
    clock = Clock()
    q = make(clock, rateLimits={"local": {"maxConcurrent": 1}})
    first = q.submit(q.request("local", "t", 0, 1))
    assert first is not None
    low = q.request("local", "t", 0, 0)
    high = q.request("local", "t", 0, 2)
    normal = q.request("local", "t", 0, 1)
    for r in (low, high, normal):
        assert q.submit(r) is None
    res = q.pump()
    assert res.admitted == [] and res.next_wake == low.deadline  # nothing but a release or a deadline helps
    q.limiter.release(first)
    order = []
    for _ in range(3):
        ((req, ticket),) = q.pump().admitted
        order.append(req)
        q.limiter.release(ticket)
    assert order == [high, normal, low]


def test_newcomers_do_not_overtake_waiting_tasks() -> None:
    clock = Clock()
    q = make(clock, rateLimits={"local": {"requestsPerMinute": 60}})
    for _ in range(60):
        assert q.submit(q.request("local", "t", 0, 1)) is not None
    waiting = q.request("local", "t", 0, 1)
    assert q.submit(waiting) is None
    clock.advance(1.0)  # one token back
    late = q.request("local", "t", 0, 1)
    assert q.submit(late) is None  # queues behind, even though a token is free
    res = q.pump()
    assert [r for r, _ in res.admitted] == [waiting]
    assert res.next_wake is not None and math.isclose(res.next_wake, clock() + 1.0)


def test_waiting_expires_after_max_wait() -> None:
    clock = Clock()
    q = make(clock, max_wait=5, rateLimits={"local": {"maxConcurrent": 1}})
    q.submit(q.request("local", "t", 0, 1))
    r = q.request("local", "t", 0, 1)
    q.submit(r)
    clock.advance(4.9)
    assert q.pump().expired == []
    clock.advance(0.2)
    res = q.pump()
    assert res.expired == [r] and len(q) == 0


def test_tokens_estimated_then_corrected_by_usage() -> None:
    clock = Clock()
    q = make(clock, rateLimits={"local": {"tokensPerMinute": 1000}})
    t1 = q.submit(q.request("local", "t", 400, 1))
    t2 = q.submit(q.request("local", "t", 400, 1))
    assert t1 is not None and t2 is not None
    assert q.submit(q.request("local", "t", 400, 1)) is None  # 200 left
    q.limiter.release(t1, actual_tokens=50)  # 350 given back
    ((_, t3),) = q.pump().admitted
    q.limiter.release(t2, actual_tokens=900)  # 500 more charged: in debt now
    bucket = q.limiter.tiers["local"].tokens
    assert bucket is not None and math.isclose(bucket.available(clock()), 1000 - 50 - 900 - 400)
    assert t3 is not None


def test_other_tiers_pass_while_one_is_blocked() -> None:
    clock = Clock()
    q = make(clock, rateLimits={"local": {"maxConcurrent": 1}})
    q.submit(q.request("local", "t", 0, 3))
    assert q.submit(q.request("local", "t", 0, 3)) is None
    assert q.submit(q.request("frontier", "t", 0, 0)) is not None


def test_tenant_limits_default_and_override_on_top_of_tier() -> None:
    clock = Clock()
    q = make(
        clock,
        tenantLimits={
            "default": {"maxConcurrent": 2},
            "defaultScope": "perTenant",
            "overrides": {"vip": {"maxConcurrent": 5}},
        },
    )
    assert sum(q.submit(q.request("local", "a", 0, 1)) is not None for _ in range(10)) == 2
    assert sum(q.submit(q.request("local", "b", 0, 1)) is not None for _ in range(10)) == 2
    assert sum(q.submit(q.request("local", "vip", 0, 1)) is not None for _ in range(10)) == 5


def test_unlisted_tenants_share_one_default_budget_so_new_names_gain_nothing() -> None:
    clock = Clock()
    q = make(clock, tenantLimits={"default": {"requestsPerMinute": 6}, "overrides": {"vip": {}}})
    # A client rotating tenant names (a1, a2, ...) draws on the same budget as every unlisted tenant.
    got = [q.submit(q.request("local", f"a{i}", 0, 1)) is not None for i in range(30)]
    assert sum(got) == 6 and all(got[:6])
    assert q.submit(q.request("local", "default", 0, 1)) is None  # the default tenant is unlisted too
    assert set(q.limiter.tenants) == {SHARED_BUDGET}  # one limit set, not one per name
    assert q.submit(q.request("local", "vip", 0, 1)) is not None  # a listed tenant has its own
    for _ in range(len(q.waiting)):
        q.cancel(q.waiting[0][1])
    clock.advance(60)  # a minute refills the one shared bucket: six more, whatever the names
    assert sum(q.submit(q.request("local", f"b{i}", 0, 1)) is not None for i in range(30)) == 6


def test_a_policy_without_tenant_limits_has_the_shared_default() -> None:
    spec = RouterPolicySpec()
    assert spec.tenant_limits.default == RateLimit(requests_per_minute=DEFAULT_TENANT_REQUESTS_PER_MINUTE)
    assert spec.tenant_limits.default_scope == "shared"
    clock = Clock()
    q = make(clock)
    n = DEFAULT_TENANT_REQUESTS_PER_MINUTE
    assert sum(q.submit(q.request("local", f"t{i}", 0, 1)) is not None for i in range(n + 10)) == n


def test_a_tenant_waiting_on_its_own_limit_does_not_hold_up_another_on_the_same_tier() -> None:
    clock = Clock()
    q = make(
        clock,
        rateLimits={"local": {"requestsPerMinute": 1000}},
        tenantLimits={"overrides": {"a": {"requestsPerMinute": 5}, "b": {"requestsPerMinute": 5}}},
    )
    # a floods ten times its limit: five pass, 45 wait for a's own bucket
    flood = [q.request("local", "a", 0, 1) for _ in range(50)]
    assert sum(q.submit(r) is not None for r in flood) == 5
    assert len(q) == 45
    # b, within its limit, passes at once, at the fast path and after a pump alike
    assert all(q.submit(q.request("local", "b", 0, 1)) is not None for _ in range(3))
    late = [q.request("local", "b", 0, 1) for _ in range(2)]
    res = q.pump()
    assert res.admitted == []
    assert all(q.submit(r) is not None for r in late)
    sixth = q.request("local", "b", 0, 1)
    assert q.submit(sixth) is None  # b's own sixth waits for b's bucket
    # waiting tasks keep their order and come through at their own tenant's rate
    clock.advance(12)  # one token back for a and for b (5 per minute)
    assert [r for r, _ in q.pump().admitted] == [flood[5], sixth]
    assert len(q) == 44


def test_a_full_tier_still_makes_everyone_queue_in_order() -> None:
    clock = Clock()
    q = make(clock, rateLimits={"local": {"maxConcurrent": 1}}, tenantLimits={"default": {}})
    first = q.submit(q.request("local", "a", 0, 1))
    assert first is not None
    waiting = q.request("local", "a", 0, 1)
    assert q.submit(waiting) is None
    q.limiter.release(first)
    other = q.request("local", "b", 0, 1)
    assert q.submit(other) is None  # the tier has room again, but an earlier task waits for it
    assert [r for r, _ in q.pump().admitted] == [waiting]


def test_unlimited_requests_get_a_free_ticket() -> None:
    clock = Clock()
    q = make(clock, tenantLimits={"default": {}})
    t = q.submit(q.request("local", "t", 10**9, 1))
    assert t is not None and t.limits == ()
    assert not q.limiter.needs_tracking(t.limits)


def test_idle_tenant_limit_sets_are_dropped_once_full_and_unused() -> None:
    clock = Clock()
    q = make(
        clock,
        tenantLimits={"default": {"requestsPerMinute": 60, "maxConcurrent": 1}, "defaultScope": "perTenant"},
    )
    idle_after = q.limiter.tenant_idle_seconds
    # "busy" holds a dispatch, "waits" has a task waiting behind its own limit, "quiet" is done.
    held = q.submit(q.request("local", "busy", 0, 1))
    assert held is not None and held.tracked
    first = q.submit(q.request("local", "waits", 0, 1))
    waiting = q.request("local", "waits", 0, 1)
    assert first is not None and q.submit(waiting) is None
    quiet = q.submit(q.request("local", "quiet", 0, 1))
    assert quiet is not None
    q.limiter.release(quiet)
    for tenant in ("a", "b", "c"):  # seen once, never admitted anything since
        q.request("local", tenant, 0, 1)
    assert set(q.limiter.tenants) == {"busy", "waits", "quiet", "a", "b", "c"}

    clock.advance(idle_after - 1)
    assert q.evict_idle_tenants() == 0  # not idle long enough
    clock.advance(2)
    assert q.evict_idle_tenants() == 4
    assert set(q.limiter.tenants) == {"busy", "waits"}  # a held dispatch and a waiting task keep theirs

    q.limiter.release(held)
    q.limiter.release(first)
    assert q.evict_idle_tenants() == 1 and set(q.limiter.tenants) == {"waits"}
    assert q.cancel(waiting)
    assert q.evict_idle_tenants() == 1 and q.limiter.tenants == {}
    assert q._waiters_on == {} and q._blocked_on == {}  # no bookkeeping left for sets nobody waits on


def test_a_tenant_bucket_that_is_not_full_is_kept_and_a_rebuilt_one_has_the_same_limits() -> None:
    clock = Clock()
    q = make(clock, tenantLimits={"default": {"requestsPerMinute": 2}})
    assert q.submit(q.request("local", "t", 0, 1)) is not None
    assert q.submit(q.request("local", "t", 0, 1)) is not None
    clock.advance(q.limiter.tenant_idle_seconds + 1)
    shared = q.limiter.tenants[SHARED_BUDGET]
    shared.requests.take(1, clock())  # type: ignore[union-attr]  # still in debt
    shared.last_used = 0.0
    assert q.evict_idle_tenants() == 0  # dropping it would hand out a full bucket early
    clock.advance(120)
    assert q.evict_idle_tenants() == 1
    # The rebuilt limit set enforces the same limit: two per minute, then the third waits.
    assert q.submit(q.request("local", "t", 0, 1)) is not None
    assert q.submit(q.request("local", "t", 0, 1)) is not None
    assert q.submit(q.request("local", "t", 0, 1)) is None
