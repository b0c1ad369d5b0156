"""The budget counters on NATS: reserve, settle and read them in the Key-Value bucket
:data:`~loom.router.budgets.BUDGETS_BUCKET` by compare-and-set, so every router replica sees every
other's reservations (the rules are in :mod:`loom.router.budgets`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from loom.api.router_policy import RouterPolicySpec
from loom.bus import kv_read, kv_swap
from loom.clock import Clock
from loom.costs import COST_SCALE
from loom.messages import TokenUsage
from loom.router.budgets import (
    Budget,
    Hold,
    admits,
    budgets_for,
    budgets_of,
    charge,
    counter_key,
    window_name,
)

#: Compare-and-set attempts before a contended counter is reported as an error.
_CAS_TRIES = 100


class BudgetContended(RuntimeError):
    """A counter kept changing under every attempt (the caller retries the task later)."""


@dataclass(frozen=True)
class Exhausted:
    """A budget had no room: ``total`` of ``budget.limit`` units used in ``window``."""

    budget: Budget
    window: str
    total: int

    def describe(self) -> str:
        used, limit = self.total, self.budget.limit
        head = f"budget {self.budget.label} exhausted in {self.window}"
        if self.budget.unit == "cost":
            return f"{head}: {used / COST_SCALE:g} of {limit / COST_SCALE:g}"
        return f"{head}: {used} of {limit} tokens"


class BudgetLedger:
    """The budgets of one RouterPolicy against one Key-Value bucket."""

    def __init__(self, policy: RouterPolicySpec, kv: Any, wall: Clock = time.time):
        self.policy = policy
        self.kv = kv
        self.wall = wall
        self.budgets = budgets_of(policy)
        self.zone = policy.budgets.time_zone
        #: Last total seen per budget label (for the gauges).
        self.seen: dict[str, tuple[str, int]] = {}
        #: Changes waiting for the next compare-and-set of their counter, and the counters being written.
        self._pending: dict[str, list[Change]] = {}
        self._flushing: set[str] = set()
        self._jobs: set[asyncio.Task[None]] = set()

    def applies(self, tier: str, tenant: str) -> list[Budget]:
        """The budgets a task of (tier, tenant) counts against."""
        return budgets_for(self.budgets, tier, tenant)

    def _price(self, tier: str) -> Any:
        try:
            return self.policy.tier(tier).price
        except KeyError:
            return None

    async def reserve(self, tier: str, tenant: str, estimate: TokenUsage) -> list[Hold] | Exhausted:
        """Reserve ``estimate`` in every budget of (tier, tenant), or none when one has no room."""
        wall = self.wall()
        held: list[Hold] = []
        for budget in self.applies(tier, tenant):
            window = window_name(wall, budget.period, self.zone)
            amount = charge(budget.unit, estimate, self._price(tier))
            refused = await self._add(budget, window, amount, check=True)
            if refused is not None:
                await self.release(held)
                return Exhausted(budget, window, refused)
            held.append(Hold(budget, window, amount))
        return held

    async def release(self, holds: list[Hold]) -> None:
        """Give reservations back whole (the task was not dispatched)."""
        for h in holds:
            await self._add(h.budget, h.window, -h.amount, check=False)

    async def settle(
        self, holds: list[Hold], reserved_tier: str, answered_tier: str, usage: TokenUsage
    ) -> int:
        """Correct reservations to the real ``usage``, charged to the tier that answered (a fallback
        tier's budgets are charged, the reserved tier's given back). Returns the cost in millionths."""
        price = self._price(answered_tier)
        for h in holds:
            moved = h.budget.scope == f"tier:{reserved_tier}" and answered_tier != reserved_tier
            real = 0 if moved else charge(h.budget.unit, usage, price)
            if real != h.amount:
                await self._add(h.budget, h.window, real - h.amount, check=False)
        if answered_tier != reserved_tier:
            wall = self.wall()
            for budget in self.budgets:
                if budget.scope == f"tier:{answered_tier}":
                    window = window_name(wall, budget.period, self.zone)
                    await self._add(budget, window, charge(budget.unit, usage, price), check=False)
        return charge("cost", usage, price)

    async def _add(self, budget: Budget, window: str, amount: int, *, check: bool) -> int | None:
        """Add ``amount`` to a counter; with ``check``, only while the budget admits (returns the total
        that refused it). The changes of this replica's concurrent tasks to one counter are written
        together in one compare-and-set (group commit), in arrival order."""
        key = counter_key(budget, window)
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        queue = self._pending.setdefault(key, [])
        queue.append(Change(amount, check, fut))
        if len(queue) == 1 and key not in self._flushing:
            self._flushing.add(key)
            job = asyncio.ensure_future(self._flush(budget, window, key))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
        return await fut

    async def _flush(self, budget: Budget, window: str, key: str) -> None:
        try:
            while batch := self._pending.pop(key, []):
                try:
                    outcomes = await self._swap(budget, window, key, batch)
                except BaseException as exc:
                    for change in batch:
                        if not change.fut.done():
                            change.fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for change, outcome in zip(batch, outcomes, strict=True):
                    if not change.fut.done():
                        change.fut.set_result(outcome)
        finally:
            self._flushing.discard(key)

    async def _swap(self, budget: Budget, window: str, key: str, batch: list[Change]) -> list[int | None]:
        for _ in range(_CAS_TRIES):
            raw, rev = await kv_read(self.kv, key)
            total = int(raw or b"0")
            new, outcomes = apply_changes(total, budget.limit, [(c.amount, c.check) for c in batch])
            if new == total or await kv_swap(self.kv, key, str(new).encode(), rev):
                self.seen[budget.label] = (window, new)
                return outcomes
        raise BudgetContended(f"budget counter {key} changed under {_CAS_TRIES} attempts")


@dataclass
class Change:
    """One task's change to a counter, waiting for the next compare-and-set."""

    amount: int
    check: bool
    fut: asyncio.Future[int | None]


def apply_changes(total: int, limit: int, changes: list[tuple[int, bool]]) -> tuple[int, list[int | None]]:
    """The counter after ``changes`` (amount, check) in order, and each one's outcome: None when
    applied, the total that refused it when a checked change found the budget used up (never below 0)."""
    outcomes: list[int | None] = []
    for amount, check in changes:
        if check and not admits(total, limit):
            outcomes.append(total)
            continue
        total = max(0, total + amount)
        outcomes.append(None)
    return total, outcomes


async def budget_usage(kv: Any, policy: RouterPolicySpec, wall: float) -> list[tuple[Budget, str, int]]:
    """(budget, current window, units used) for every budget of ``policy`` (status, ``loom budget``)."""
    out = []
    for budget in budgets_of(policy):
        window = window_name(wall, budget.period, policy.budgets.time_zone)
        raw, _ = await kv_read(kv, counter_key(budget, window))
        out.append((budget, window, int(raw or b"0")))
    return out
