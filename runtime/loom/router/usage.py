"""What a RouterPolicy's limits and budgets have used in their current windows, read from the shared
counters (for ``loom budget`` and the RouterPolicy status).

Rows are bounded by the configuration, never by traffic: one per budget, one per shared limit of
each tier, listed tenant and the default tenant budget (``tenant:*``). Limits kept by a single
router in memory (``--limits local``) are not in NATS; their rows say so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from loom.api.router_policy import RouterPolicySpec
from loom.bus import Bus, kv_read
from loom.costs import COST_SCALE
from loom.router.budgets import BUDGETS_BUCKET, budgets_of, counter_key, window_name
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
    """(limit rows, budget rows) of ``policy`` now; ``shared`` False: its routers keep the limits in
    memory (no limit use to read), None: read them when the bucket exists."""
    limits_kv = await bus.existing_key_value(LIMITS_BUCKET) if shared is not False else None
    limits = await limit_usage(limits_kv, policy, wall)
    budgets = await budget_rows(await bus.existing_key_value(BUDGETS_BUCKET), policy, wall)
    return limits, budgets
