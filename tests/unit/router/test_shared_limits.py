"""Shared limits, the pure parts: windows, what a replica may take, slot leases, the split floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.api.router_policy import RouterPolicySpec
from loom.router.limits import AdmissionQueue, Limiter
from loom.router.shared_limits import (
    SharedLimits,
    SlotGrants,
    WindowGrants,
    demand_of,
    limits_mode,
    per_window,
    scope_key,
    slots_to_hold,
    window_of,
    window_take,
)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_windows_are_aligned_to_wall_time() -> None:
    assert window_of(119.999, 60) == 1 and window_of(120.0, 60) == 2
    assert window_of(10.5, 2) == 5


def test_per_window_scales_the_minute_and_refuses_less_than_one() -> None:
    assert per_window(600, 60, "x") == 600
    assert per_window(600, 2, "x") == 20
    with pytest.raises(ValueError, match="less than one per 2s window; use a window of at least 6s"):
        per_window(10, 2, "tier:local requestsPerMinute")


def test_window_take_never_passes_the_limit_but_always_charges_what_was_used() -> None:
    assert window_take(total=0, limit=20, want=8, owed=0) == 8
    assert window_take(total=15, limit=20, want=8, owed=0) == 5
    assert window_take(total=20, limit=20, want=8, owed=0) == 0
    assert window_take(total=18, limit=20, want=8, owed=3) == 3  # used beyond the grant: charged, no more
    assert window_take(total=0, limit=20, want=-1, owed=0) == 0


def test_slots_of_a_dead_replica_count_until_its_lease_ends() -> None:
    holders = {"dead": [2.0, 100.0], "me": [0.0, 0.0]}
    assert slots_to_hold(holders, "me", limit=2, held=0, target=2, wall=99.0) == 0
    assert slots_to_hold(holders, "me", limit=2, held=0, target=2, wall=100.0) == 2  # expired: free again
    # slots already held stay held up to the target, even if the others' leases overlap
    assert slots_to_hold({"a": [2.0, 200.0]}, "me", limit=2, held=1, target=3, wall=0) == 1
    assert slots_to_hold({"a": [1.0, 200.0]}, "me", limit=3, held=2, target=1, wall=0) == 1  # gives back


def test_limits_mode() -> None:
    assert limits_mode("auto", 1) == "local" and limits_mode("auto", 2) == "shared"
    assert limits_mode("local", 3) == "local" and limits_mode("shared", 1) == "shared"
    with pytest.raises(ValueError, match="one of auto, local, shared"):
        limits_mode("everywhere", 1)


def test_scope_keys_are_valid_key_tokens_for_any_tenant_name() -> None:
    import re

    for name in ("tier:local", "tenant:*", "tenant:ünï cödé/x"):
        assert re.fullmatch(r"[-_=a-zA-Z0-9]+", scope_key(name))
    assert scope_key("tenant:a") != scope_key("tenant:b")


def test_split_mode_refuses_a_concurrency_below_one_per_replica() -> None:
    # three replicas each rounding a limit of 2 up to one would admit 3
    spec = RouterPolicySpec.model_validate({"replicas": 3, "rateLimits": {"local": {"maxConcurrent": 2}}})
    with pytest.raises(ValueError, match="maxConcurrent 2 cannot be split over 3 router replicas"):
        Limiter(spec, Clock())
    tenant = RouterPolicySpec.model_validate(
        {"replicas": 3, "tenantLimits": {"overrides": {"a": {"maxConcurrent": 1}}}}
    )
    with pytest.raises(ValueError, match="tenant:a"):
        Limiter(tenant, Clock())
    # shared limit sets have no split: the same policy builds
    Limiter(spec, Clock(), factory=SharedLimits().limit_set)


def test_window_grants_admit_what_was_granted_in_the_current_window_only() -> None:
    wall = Clock(1002.0)
    g = WindowGrants("k", limit=5, window_seconds=10, wall=wall)
    assert not g.fits(1, 0)
    assert g.time_until(1, 0) == pytest.approx(8.0)  # next window at 1010
    g.granted = 3
    assert g.fits(1, 0)
    g.take(1, 0)
    g.take(1, 0)
    g.give(1, now=5.0, since=4.0)  # taken a second ago: this window, given back
    assert g.available(0) == 2
    wall.t = 1009.5
    g.give(1, now=10.0, since=0.0)  # taken 10 s ago, in the previous window: not given to this one
    assert g.available(0) == 2
    wall.t = 1010.0
    assert g.available(0) == 0 and g.settled(0)  # a new window: what was granted is gone
    g.granted = 5
    assert g.fits(50, 0) and not g.settled(0)  # oversized: needs a whole window's units


def test_demand_counts_each_waiting_request_in_every_limit_set_it_needs() -> None:
    clock = Clock(0.0)
    shared = SharedLimits(wall=Clock())
    spec = RouterPolicySpec.model_validate(
        {
            "replicas": 2,
            "rateLimits": {"local": {"requestsPerMinute": 60, "tokensPerMinute": 600, "maxConcurrent": 4}},
            "tenantLimits": {"default": {"requestsPerMinute": 60}},
        }
    )
    q = AdmissionQueue(Limiter(spec, clock, factory=shared.limit_set), max_wait=30)
    reqs = [q.request("local", "t", 400.0, 1) for _ in range(3)]
    for r in reqs:
        assert q.submit(r) is None  # nothing granted yet: all wait
    d = demand_of(req for _, req in q.waiting)
    tier, tenant = reqs[0].limits
    assert (d[id(tier)].requests, d[id(tier)].slots) == (3, 3)
    assert d[id(tier)].tokens == 3 * 400.0
    assert d[id(tenant)].requests == 3
    assert isinstance(tier.concurrency, SlotGrants) and tier.concurrency.limit == 0


def test_the_router_refuses_limits_that_cannot_work_before_connecting(tmp_path: Path) -> None:
    from tests.support.processes import run_cli, write_yaml

    def policy(**spec: object) -> Path:
        doc = {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "p"},
            "spec": spec,
        }
        return write_yaml(tmp_path, f"p{len(list(tmp_path.iterdir()))}", doc)

    unreachable = ("--nats-url", "nats://127.0.0.1:1")  # never reached: the check comes first
    split = policy(replicas=3, rateLimits={"local": {"maxConcurrent": 2}})
    out = run_cli("router", "--config", str(split), "--limits", "local", *unreachable, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "maxConcurrent 2 cannot be split over 3 router replicas" in out.stderr
    window = policy(rateLimits={"local": {"requestsPerMinute": 10}})
    out = run_cli(
        "router", "--config", str(window), "--limits", "shared", "--limit-window-seconds", "2", *unreachable
    )
    assert out.returncode == 2, out.stderr
    assert "less than one per 2s window; use a window of at least 6s" in out.stderr
