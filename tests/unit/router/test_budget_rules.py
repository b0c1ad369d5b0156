"""Budget rules, pure: calendar windows in a time zone, cost with cache rates, which budgets apply,
admission, and the RouterPolicy fields that declare them."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from loom.api.router_policy import RouterPolicySpec, TierPrice
from loom.costs import COST_SCALE, cost_micros
from loom.messages import TokenUsage
from loom.router.budgets import (
    Budget,
    admits,
    budgets_for,
    budgets_of,
    charge,
    counter_key,
    estimate_usage,
    window_end,
    window_name,
)


def at(zone: str, *args: int) -> float:
    return dt.datetime(*args, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[arg-type,misc]


def test_day_windows_begin_at_local_midnight() -> None:
    berlin = at("Europe/Berlin", 2026, 12, 2, 0, 30)  # 23:30 UTC the day before
    assert window_name(berlin, "day", "Europe/Berlin") == "2026-12-02"
    assert window_name(berlin, "day", "UTC") == "2026-12-01"
    assert window_end(berlin, "day", "Europe/Berlin") == at("Europe/Berlin", 2026, 12, 3)
    just_before = at("Europe/Berlin", 2026, 12, 2, 23, 59, 59)
    assert window_name(just_before, "day", "Europe/Berlin") == "2026-12-02"
    assert window_name(just_before + 1, "day", "Europe/Berlin") == "2026-12-03"


def test_a_day_with_a_clock_change_ends_at_the_next_local_midnight() -> None:
    # 2026-03-29 has 23 hours in Berlin (clocks go forward at 02:00)
    start = at("Europe/Berlin", 2026, 3, 29)
    assert window_end(start, "day", "Europe/Berlin") - start == 23 * 3600
    start = at("Europe/Berlin", 2026, 10, 25)  # 25 hours
    assert window_end(start, "day", "Europe/Berlin") - start == 25 * 3600


def test_month_windows_and_the_year_end() -> None:
    dec = at("America/New_York", 2026, 12, 31, 23, 0)
    assert window_name(dec, "month", "America/New_York") == "2026-12"
    assert window_name(dec, "month", "UTC") == "2027-01"  # already January in UTC
    assert window_end(dec, "month", "America/New_York") == at("America/New_York", 2027, 1, 1)
    assert window_end(at("UTC", 2026, 2, 10), "month", "UTC") == at("UTC", 2026, 3, 1)


def test_cost_prices_cached_tokens_at_their_own_rate() -> None:
    price = TierPrice(input_per_million=3.0, output_per_million=15.0)
    fresh = TokenUsage(prompt_tokens=1_000_000)
    cached = TokenUsage(cache_read_tokens=1_000_000)
    written = TokenUsage(cache_write_tokens=1_000_000)
    assert cost_micros(price, fresh) == 3 * COST_SCALE
    assert cost_micros(price, cached) == round(0.3 * COST_SCALE)  # a tenth: never priced as fresh
    assert cost_micros(price, written) == round(3.75 * COST_SCALE)
    assert cost_micros(price, TokenUsage(completion_tokens=1000)) == 15_000  # 0.015
    own = TierPrice(
        input_per_million=3.0, output_per_million=15.0, cache_read_per_million=0.5, cache_write_per_million=4
    )
    assert cost_micros(own, cached) == round(0.5 * COST_SCALE)
    assert cost_micros(own, written) == 4 * COST_SCALE
    assert cost_micros(price, TokenUsage(prompt_tokens=1)) == 3  # millionths, rounded up


def test_token_budgets_count_fresh_input_cache_writes_and_output_not_cache_reads() -> None:
    usage = TokenUsage(prompt_tokens=100, completion_tokens=50, cache_read_tokens=1000, cache_write_tokens=7)
    assert charge("tokens", usage, None) == 157
    assert charge("cost", usage, None) == 0  # no price: nothing to count
    assert charge("tokens", estimate_usage(300, 200), None) == 500


def policy(**spec: object) -> RouterPolicySpec:
    return RouterPolicySpec.model_validate(spec)


PRICED = [
    {"name": "cheap", "price": {"inputPerMillion": 1, "outputPerMillion": 2}},
    {"name": "dear", "price": {"inputPerMillion": 10, "outputPerMillion": 30}},
]


def test_budgets_of_a_policy_and_the_ones_a_task_counts_against() -> None:
    p = policy(
        tiers=PRICED,
        budgets={
            "tiers": {"dear": {"costPerDay": 2.5, "tokensPerMonth": 1000}},
            "tenants": {"acme": {"tokensPerDay": 500}},
        },
    )
    all_budgets = budgets_of(p)
    assert all_budgets == [
        Budget("tier:dear", "tokens", "month", 1000),
        Budget("tier:dear", "cost", "day", 2_500_000),
        Budget("tenant:acme", "tokens", "day", 500),
    ]
    assert [b.label for b in budgets_for(all_budgets, "dear", "acme")] == [
        "tier:dear/tokens/month",
        "tier:dear/cost/day",
        "tenant:acme/tokens/day",
    ]
    assert budgets_for(all_budgets, "cheap", "other") == []
    assert budgets_for(all_budgets, "cheap", "acme") == [all_budgets[2]]
    keys = {counter_key(b, "2026-12-02") for b in all_budgets}
    assert len(keys) == 3 and all(" " not in k and "*" not in k for k in keys)


def test_admission_while_below_the_limit() -> None:
    assert admits(0, 100)
    assert admits(99, 100)  # one more task: the total may pass the limit by its estimate at most
    assert not admits(100, 100)
    assert not admits(180, 100)


def test_policy_rejects_budgets_it_could_not_keep() -> None:
    with pytest.raises(ValidationError, match=r"a cost budget needs tiers\.plain\.price"):
        policy(tiers=[{"name": "plain"}], budgets={"tiers": {"plain": {"costPerDay": 1}}})
    with pytest.raises(ValidationError, match="a cost budget needs a price on every tier"):
        policy(tiers=[*PRICED, {"name": "plain"}], budgets={"tenants": {"acme": {"costPerMonth": 1}}})
    with pytest.raises(ValidationError, match=r"budgets\.tiers\.nope: unknown tier"):
        policy(tiers=PRICED, budgets={"tiers": {"nope": {"tokensPerDay": 1}}})
    with pytest.raises(ValidationError, match="unknown time zone"):
        policy(budgets={"timeZone": "Mars/Olympus"})
    with pytest.raises(ValidationError, match="greater than 0"):
        policy(budgets={"tenants": {"acme": {"costPerDay": 0}}})
    ok = policy(tiers=PRICED, budgets={"timeZone": "Asia/Tokyo", "onExhausted": "wait"})
    assert ok.budgets.on_exhausted == "wait"


def test_changes_written_together_keep_arrival_order_and_the_admission_rule() -> None:
    from loom.router.budget_ledger import apply_changes

    # 90 of 100 used: the first reservation fits (total below the limit), the next two find it used up,
    # a settlement giving 40 back lets the last one in
    total, outcomes = apply_changes(90, 100, [(30, True), (30, True), (5, True), (-40, False), (30, True)])
    assert outcomes == [None, 120, 120, None, None]
    assert total == 110
    assert apply_changes(5, 100, [(-20, False)]) == (0, [None])  # never below zero
