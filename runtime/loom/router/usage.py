"""What a RouterPolicy's limits and budgets have used in their current windows, read from the shared
counters (for ``loom budget`` and the RouterPolicy status).

Rows are bounded by the configuration, never by traffic: one per budget, one per limit of each
tier, listed tenant and the default tenant budget (``tenant:*``). Shared limits are read from their
windows' counters. A router that keeps its limits in memory (one replica: ``--limits auto`` or
``local``) holds all the use there is, and stores a snapshot of it every few seconds
(:func:`local_use`, key :data:`LOCAL_USE_KEY` of the limits bucket): for a request or token limit,
what its bucket has given out and not yet refilled (window ``now``), and the tasks in flight. A
snapshot older than :data:`LOCAL_USE_FRESH_SECONDS` (the router is gone) reads as unknown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from loom.api.router_policy import RouterPolicySpec
from loom.bus import Bus, kv_read
from loom.costs import COST_SCALE
from loom.router.budgets import BUDGETS_BUCKET, budgets_of, counter_key, window_name
from loom.router.limits import LimitSet
from loom.router.shared_limits import (
    DEFAULT_WINDOW_SECONDS,
    LIMITS_BUCKET,
    live_holders,
    per_window,
    scope_key,
    window_of,
)


@dataclass(frozen=True)
class Use:
    """One limit or budget: ``used`` of ``limit`` in ``window`` (None: not readable from NATS)."""

    scope: str
    what: str
    window: str
    used: float | None
    limit: float

    @property
    def ratio(self) -> float | None:
        return None if self.used is None else self.used / self.limit

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _limit_scopes(policy: RouterPolicySpec) -> list[tuple[str, Any]]:
    scopes: list[tuple[str, Any]] = [(f"tier:{t}", spec) for t, spec in sorted(policy.rate_limits.items())]
    if policy.tenant_limits.default is not None and policy.tenant_limits.default_scope == "shared":
        scopes.append(("tenant:*", policy.tenant_limits.default))
    scopes += [(f"tenant:{t}", spec) for t, spec in sorted(policy.tenant_limits.overrides.items())]
    return scopes


async def limit_usage(
    kv: Any, policy: RouterPolicySpec, wall: float, window_seconds: float = DEFAULT_WINDOW_SECONDS
) -> list[Use]:
    """Shared limit use (requests, tokens in the current window; slots held under a live lease);
    ``kv`` None: the limits are not shared (each row's ``used`` is None)."""
    out = []
    w = window_of(wall, window_seconds)
    window = f"{window_seconds:g}s#{w}"
    for scope, spec in _limit_scopes(policy):
        key = scope_key(scope)
        for what, per_minute in (("requests", spec.requests_per_minute), ("tokens", spec.tokens_per_minute)):
            if per_minute:
                limit = per_window(per_minute, window_seconds, f"{scope} {what}")
                raw = (await kv_read(kv, f"{key}.{what}.{w}"))[0] if kv is not None else None
                used = None if kv is None else float(int(raw or b"0"))
                out.append(Use(scope, what, window, used, float(limit)))
        if spec.max_concurrent:
            used = None
            if kv is not None:
                raw = (await kv_read(kv, f"{key}.slots"))[0]
                holders = live_holders(json.loads(raw), wall) if raw else {}
                used = float(sum(int(h[0]) for h in holders.values()))
            out.append(Use(scope, "in_flight", "now", used, float(spec.max_concurrent)))
    return out


#: Key (in the limits bucket) of the in-memory limit use of a router that does not share its limits.
LOCAL_USE_KEY = "local-use"
#: Age past which that snapshot no longer describes a running router.
LOCAL_USE_FRESH_SECONDS = 60.0


def local_use(sets: Iterable[LimitSet], now: float, wall: float) -> bytes:
    """The snapshot a router keeping its limits in memory stores: per scope, the requests and tokens
    its buckets have given out and not yet refilled, and the tasks it has in flight."""
    scopes: dict[str, dict[str, float]] = {}
    for ls in sets:
        entry: dict[str, float] = {}
        for what, bucket in (("requests", ls.requests), ("tokens", ls.tokens)):
            if bucket is not None:
                entry[what] = round(bucket.capacity - bucket.available(now), 3)
        if ls.concurrency is not None:
            entry["in_flight"] = float(ls.concurrency.used)
        if entry:
            scopes[ls.name] = entry
    return json.dumps({"at": wall, "scopes": scopes}, sort_keys=True).encode()


async def local_limit_usage(kv: Any, policy: RouterPolicySpec, wall: float) -> list[Use] | None:
    """Limit rows from a fresh in-memory snapshot; None when there is none (limits shared, or no
    router running)."""
    raw = (await kv_read(kv, LOCAL_USE_KEY))[0] if kv is not None else None
    if not raw:
        return None
    doc = json.loads(raw)
    if wall - float(doc.get("at", 0.0)) > LOCAL_USE_FRESH_SECONDS:
        return None
    out = []
    for scope, spec in _limit_scopes(policy):
        use = doc.get("scopes", {}).get(scope, {})  # a scope not used yet has no limit set: nothing used
        for what, per_minute in (("requests", spec.requests_per_minute), ("tokens", spec.tokens_per_minute)):
            if per_minute:
                out.append(Use(scope, what, "now", float(use.get(what, 0.0)), float(per_minute)))
        if spec.max_concurrent:
            out.append(
                Use(scope, "in_flight", "now", float(use.get("in_flight", 0.0)), float(spec.max_concurrent))
            )
    return out


async def budget_rows(kv: Any, policy: RouterPolicySpec, wall: float) -> list[Use]:
    """Budget use in each budget's current calendar window (cost in currency); ``kv`` None: nothing
    has been reserved yet, every budget is at zero."""
    rows = []
    for budget in budgets_of(policy):
        window = window_name(wall, budget.period, policy.budgets.time_zone)
        raw = (await kv_read(kv, counter_key(budget, window)))[0] if kv is not None else None
        scale = COST_SCALE if budget.unit == "cost" else 1
        what = f"{budget.unit}/{budget.period}"
        rows.append(Use(budget.scope, what, window, int(raw or b"0") / scale, budget.limit / scale))
    return rows


async def read_usage(
    bus: Bus, policy: RouterPolicySpec, wall: float, *, shared: bool | None = None
) -> tuple[list[Use], list[Use]]:
    """(limit rows, budget rows) of ``policy`` now; ``shared`` False: its router keeps the limits in
    memory (its snapshot is read), True: they are shared, None: whichever the bucket holds (a fresh
    snapshot first)."""
    limits_kv = await bus.existing_key_value(LIMITS_BUCKET)
    limits = await local_limit_usage(limits_kv, policy, wall) if shared is not True else None
    if limits is None:
        limits = await limit_usage(limits_kv if shared is not False else None, policy, wall)
    return limits, await budget_rows(await bus.existing_key_value(BUDGETS_BUCKET), policy, wall)
