"""Token and cost budgets over calendar windows, pure: which budgets a task counts against, its
estimate and its real charge, the window it falls in, and whether a budget admits it.

Rules (the router, the operator's status and ``loom budget`` all read them from here):

* A budget counts *units*: tokens (fresh input, cache writes and output; cache reads are left out,
  as for tokens per minute) or cost in millionths of the prices' currency (integers, so replicas
  add them exactly). Cost prices every kind of token at its own rate (:class:`TierPrice`), so a
  token read from the prompt cache is never priced as a fresh one.
* Windows are calendar days or months in ``budgets.timeZone``; a window is named by its date
  (``2026-12-02``, ``2026-12``), the same on every replica whose clock is right.
* A task is admitted while the window's total (settled usage plus open reservations) is below the
  limit, and reserves its estimate; its result settles the reservation to the real usage, in the
  window it was reserved in. So the total passes the limit by less than one task's estimate (plus
  what results report beyond their estimates), whatever the number of replicas: admissions are
  compare-and-sets that each see every earlier one (a replica writes its concurrent tasks' changes to
  one counter together, in arrival order).
* A result that never comes back leaves its estimate charged: the model may well have been
  called. Nothing a replica holds lives outside the shared counters, so a replica's death leaks
  nothing and a restart starts from the counters as they are.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from loom.api.router_policy import BudgetPeriod, BudgetUnit, RouterPolicySpec, TierPrice
from loom.costs import COST_SCALE, cost_micros
from loom.messages import TokenUsage

#: The Key-Value bucket of the budget counters.
BUDGETS_BUCKET = "loom-router-budgets"
#: Seconds a counter outlives its last change (a month and then some).
BUDGETS_TTL = 40 * 24 * 3600.0


@dataclass(frozen=True)
class Budget:
    """One budget: ``limit`` units of ``unit`` per ``period`` for ``scope`` (``tier:<t>``/``tenant:<t>``)."""

    scope: str
    unit: BudgetUnit
    period: BudgetPeriod
    limit: int

    @property
    def label(self) -> str:
        """``scope/unit/period``: names the budget in metrics, status and dead letters."""
        return f"{self.scope}/{self.unit}/{self.period}"


def budgets_of(policy: RouterPolicySpec) -> list[Budget]:
    """Every budget the policy declares (bounded by configuration)."""
    out = []
    for kind, table in (("tier", policy.budgets.tiers), ("tenant", policy.budgets.tenants)):
        for name, spec in sorted(table.items()):
            for unit, period, value in spec.limits():
                limit = value if unit == "tokens" else value * COST_SCALE
                out.append(Budget(f"{kind}:{name}", unit, period, max(1, math.floor(limit))))
    return out


def budgets_for(all_budgets: list[Budget], tier: str, tenant: str) -> list[Budget]:
    """The budgets a task on ``tier`` for ``tenant`` counts against."""
    mine = (f"tier:{tier}", f"tenant:{tenant}")
    return [b for b in all_budgets if b.scope in mine]


def window_name(wall: float, period: BudgetPeriod, zone: str) -> str:
    """The calendar window ``wall`` (seconds since the epoch) falls in: ``YYYY-MM-DD`` or ``YYYY-MM``."""
    local = dt.datetime.fromtimestamp(wall, ZoneInfo(zone))
    return local.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def window_end(wall: float, period: BudgetPeriod, zone: str) -> float:
    """When the window ``wall`` falls in ends (the next local midnight, or the next month's first)."""
    tz = ZoneInfo(zone)
    local = dt.datetime.fromtimestamp(wall, tz)
    if period == "day":
        nxt = (local.replace(tzinfo=None) + dt.timedelta(days=1)).date()
    else:
        nxt = dt.date(local.year + local.month // 12, local.month % 12 + 1, 1)
    return dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()


def counter_key(budget: Budget, window: str) -> str:
    """The Key-Value key of a budget's counter in one window."""
    from loom.router.shared_limits import scope_key

    return f"{scope_key(budget.scope)}.{budget.unit}.{budget.period}.{window}"


def charge(unit: BudgetUnit, usage: TokenUsage, price: TierPrice | None) -> int:
    """The units ``usage`` counts in a budget of ``unit`` (cost is 0 on a tier without a price)."""
    if unit == "tokens":
        return usage.limited_tokens
    return 0 if price is None else cost_micros(price, usage)


def estimate_usage(input_tokens: int, output_tokens: int) -> TokenUsage:
    """A task's estimate as usage: all input fresh, the worker's whole output budget."""
    return TokenUsage(prompt_tokens=input_tokens, completion_tokens=output_tokens)


def admits(total: int, limit: int) -> bool:
    """Whether a budget whose window holds ``total`` units admits one more task."""
    return total < limit


@dataclass(frozen=True)
class Hold:
    """What one task reserved in one budget: ``amount`` units in ``window``."""

    budget: Budget
    window: str
    amount: int

    @property
    def key(self) -> str:
        return counter_key(self.budget, self.window)
