"""Token budgets on a real nats-server: the counters under concurrent replicas, and real ``loom router``
processes keeping a tenant within its budget."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from tests.support.processes import (
    LoomProcesses,
    bus,
    collect,
    echo_worker,
    loom_procs,
    poll,
    run_cli,
    write_yaml,
)

from loom.api.router_policy import RouterPolicySpec
from loom.bus import Bus, kv_read
from loom.messages import DeadLetterReason, TaskMessage, TokenUsage
from loom.router.budget_ledger import BudgetLedger, Exhausted, budget_usage
from loom.router.budgets import BUDGETS_BUCKET, BUDGETS_TTL, Hold, counter_key, estimate_usage

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


NOON = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()


async def test_three_ledgers_reserving_at_once_pass_the_budget_by_less_than_one_estimate(bus: Bus) -> None:
    kv = await bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL)
    spec = RouterPolicySpec.model_validate({"budgets": {"tenants": {"acme": {"tokensPerDay": 1000}}}})
    wall = Wall(NOON)
    ledgers = [BudgetLedger(spec, kv, wall) for _ in range(3)]
    estimate = estimate_usage(30, 40)  # 70 tokens

    async def one(i: int) -> list[Hold] | Exhausted:
        return await ledgers[i % 3].reserve("local", "acme", estimate)

    got = await asyncio.gather(*(one(i) for i in range(60)))
    admitted = [g for g in got if not isinstance(g, Exhausted)]
    assert len(admitted) == 15  # 14 x 70 = 980 < 1000 admits a 15th: 1050, past by less than 70
    total = (await budget_usage(kv, spec, wall()))[0][2]
    assert total == 15 * 70
    assert all(g.total >= 1000 for g in got if isinstance(g, Exhausted))

    # results settle to the real usage: 20 tokens each; what is given back admits more
    for holds in admitted:
        await ledgers[0].settle(holds, "local", "local", TokenUsage(prompt_tokens=15, completion_tokens=5))
    assert (await budget_usage(kv, spec, wall()))[0][2] == 15 * 20
    more = [await ledgers[1].reserve("local", "acme", estimate) for _ in range(20)]
    assert sum(not isinstance(m, Exhausted) for m in more) == 10  # 300 + 10 x 70 = 1000

    # a new day starts from nothing; yesterday's counter is left as it was
    wall.t += 12 * 3600
    assert not isinstance(await ledgers[2].reserve("local", "acme", estimate), Exhausted)
    assert (await budget_usage(kv, spec, wall()))[0][1:] == ("2026-12-03", 70)


async def test_a_fallback_answer_is_charged_to_the_tier_that_answered(bus: Bus) -> None:
    kv = await bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL)
    spec = RouterPolicySpec.model_validate(
        {
            "tiers": [
                {"name": "main", "price": {"inputPerMillion": 1, "outputPerMillion": 1}},
                {"name": "spare", "price": {"inputPerMillion": 10, "outputPerMillion": 10}},
            ],
            "budgets": {
                "tiers": {"main": {"tokensPerDay": 10_000}, "spare": {"costPerDay": 5}},
                "tenants": {"acme": {"costPerDay": 100}},
            },
        }
    )
    ledger = BudgetLedger(spec, kv, Wall(NOON))
    holds = await ledger.reserve("main", "acme", estimate_usage(100, 100))
    assert not isinstance(holds, Exhausted)
    cost = await ledger.settle(holds, "main", "spare", TokenUsage(prompt_tokens=1000, completion_tokens=500))
    assert cost == 15_000  # 1,500 tokens at 10 per million: 0.015
    used = {b.label: n for b, _, n in await budget_usage(kv, spec, NOON)}
    assert used == {"tier:main/tokens/day": 0, "tier:spare/cost/day": 15_000, "tenant:acme/cost/day": 15_000}


def _policy(tmp: Path, budgets: dict[str, object], max_wait: float) -> Path:
    return write_yaml(
        tmp,
        "policy",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "default"},
            "spec": {"replicas": 3, "budgets": budgets, "onLimit": {"maxWaitSeconds": max_wait}},
        },
    )


async def test_three_router_processes_keep_a_tenant_within_its_budget(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    limit = 6000
    echo = echo_worker(tmp_path, "echo", max_output_tokens=100)
    pol = _policy(tmp_path, {"onExhausted": "wait", "tenants": {"acme": {"tokensPerDay": limit}}}, 4.0)
    routers = [loom_procs.router(pol, echo) for _ in range(3)]
    loom_procs.worker(echo, "local")
    sub = await bus.subscribe_results("budget", "acme")
    other_sub = await bus.subscribe_results("budget", "other")
    usage = {"prompt_tokens": 100, "completion_tokens": 50}  # 150 tokens each, estimate ~200
    tasks = [
        TaskMessage(parent_task_id="budget", worker_type="echo", tenant="acme", payload={"usage": usage})
        for _ in range(80)
    ]
    other = TaskMessage(parent_task_id="budget", worker_type="echo", tenant="other", payload={"usage": usage})
    estimate = len(tasks[0].to_bytes()) // 4 + 100
    await asyncio.gather(*(bus.publish_task(t) for t in [*tasks, other]))
    results = await collect(sub, 80, timeout=60)
    done = [r for r in results if r["status"] == "completed"]
    refused = [r for r in results if r.get("error_code") == "budget_exhausted"]
    assert len(done) + len(refused) == 80
    assert [r["status"] for r in await collect(other_sub, 1)] == ["completed"]  # no budget of its own

    spec = RouterPolicySpec.model_validate({"budgets": {"tenants": {"acme": {"tokensPerDay": limit}}}})
    kv = await bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL)
    now = dt.datetime.now(dt.UTC).timestamp()

    async def settled() -> bool:  # every reservation settled to the usage the results reported
        return (await budget_usage(kv, spec, now))[0][2] == 150 * len(done)

    await poll(settled, timeout=10)
    assert 150 * len(done) <= limit + estimate  # never past the budget by more than one estimate
    assert 150 * len(done) > limit - estimate  # waiting tasks took what settling gave back
    assert refused and all("tenant:acme/tokens/day" in r["error"] for r in refused)
    await poll(lambda: _dead(bus, len(refused)))
    assert {d.dead_letter.reason for d in await bus.dead_letters()} == {DeadLetterReason.BUDGET_EXHAUSTED}
    exhausted = sum(r.metric("loom_budget_exhausted_total", budget="tenant:acme/tokens/day") for r in routers)
    assert exhausted == len(refused)
    assert all(r.metric("loom_budget_limit", budget="tenant:acme/tokens/day") == limit for r in routers)
    key = counter_key((await budget_usage(kv, spec, now))[0][0], (await budget_usage(kv, spec, now))[0][1])
    assert (await kv_read(kv, key))[0] == str(150 * len(done)).encode()

    # loom budget shows the same from the CLI, and the shared limits' rows (bounded by the policy)
    out = run_cli("budget", "--config", str(pol), "--json", nats_url=loom_procs.nats_url)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    [row] = doc["budgets"]
    assert (row["scope"], row["what"], row["used"], row["limit"]) == (
        "tenant:acme",
        "tokens/day",
        150 * len(done),
        limit,
    )
    assert row["window"] == dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert [(r["scope"], r["what"], r["limit"]) for r in doc["limits"]] == [("tenant:*", "requests", 6000)]


async def test_dead_letter_policy_refuses_at_once(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo", max_output_tokens=100)
    pol = _policy(tmp_path, {"tenants": {"acme": {"tokensPerDay": 1}}}, 60.0)
    loom_procs.router(pol, echo)
    loom_procs.worker(echo, "local")
    sub = await bus.subscribe_results("once", "acme")
    usage = {"prompt_tokens": 10, "completion_tokens": 5}
    for _ in range(3):
        await bus.publish_task(
            TaskMessage(parent_task_id="once", worker_type="echo", tenant="acme", payload={"usage": usage})
        )
    results = await collect(sub, 3, timeout=20)  # well before the 60 s a waiting task would take
    assert sorted(r["status"] for r in results) == ["completed", "failed", "failed"]
    assert {r.get("error_code") for r in results if r["status"] == "failed"} == {"budget_exhausted"}


async def _dead(b: Bus, n: int) -> bool:
    return len(await b.dead_letters()) >= n


async def test_a_router_killed_mid_window_leaks_nothing_and_the_budget_holds(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    limit = 3000
    echo = echo_worker(tmp_path, "echo", max_output_tokens=100)
    pol = _policy(tmp_path, {"onExhausted": "wait", "tenants": {"acme": {"tokensPerDay": limit}}}, 8.0)
    routers = [loom_procs.router(pol, echo) for _ in range(2)]
    loom_procs.worker(echo, "local")
    sub = await bus.subscribe_results("kill", "acme")
    usage = {"prompt_tokens": 100, "completion_tokens": 50}
    tasks = [
        TaskMessage(
            parent_task_id="kill", worker_type="echo", tenant="acme", payload={"usage": usage, "sleep": 0.5}
        )
        for _ in range(40)
    ]
    estimate = len(tasks[0].to_bytes()) // 4 + 100
    await asyncio.gather(*(bus.publish_task(t) for t in tasks))
    await poll(lambda: sum(r.metric("loom_router_routed_total") for r in routers) >= 2, timeout=20)
    doomed, survivor = sorted(routers, key=lambda r: -r.metric("loom_router_routed_total"))
    doomed.kill()  # its reservations stay charged at their estimates; what it held comes back to the stream
    results = await collect(sub, 40, timeout=120)
    done = [r for r in results if r["status"] == "completed"]
    refused = [r for r in results if r.get("error_code") == "budget_exhausted"]
    assert len(done) + len(refused) == 40 and done and refused

    spec = RouterPolicySpec.model_validate({"budgets": {"tenants": {"acme": {"tokensPerDay": limit}}}})
    kv = await bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL)
    now = dt.datetime.now(dt.UTC).timestamp()
    total = (await budget_usage(kv, spec, now))[0][2]
    assert 150 * len(done) <= total  # never under-counted: unsettled reservations keep their estimates
    assert total <= limit + estimate  # and never past the budget by more than one estimate
    assert survivor.metric("loom_budget_used", budget="tenant:acme/tokens/day") <= limit + estimate


async def test_a_task_whose_attempts_die_unreported_keeps_its_estimate_charged(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo", max_output_tokens=100, max_deliver=1, timeout_seconds=10)
    pol = _policy(tmp_path, {"tenants": {"acme": {"tokensPerDay": 100_000}}}, 5.0)
    loom_procs.router(pol, echo)
    worker = loom_procs.worker(echo, "local", extra=("--ack-grace-seconds", "1"))
    sub = await bus.subscribe_results("dies", "acme")
    task = TaskMessage(parent_task_id="dies", worker_type="echo", tenant="acme", payload={"sleep": 30})
    await bus.publish_task(task)
    await poll(lambda: worker.metric("loom_worker_tasks_in_flight") >= 1)
    worker.kill()  # mid-task: no result; after the ack wait the only delivery is spent
    [result] = await collect(sub, 1, timeout=60)
    assert result["error_code"] == "max_deliveries"
    spec = RouterPolicySpec.model_validate({"budgets": {"tenants": {"acme": {"tokensPerDay": 100_000}}}})
    kv = await bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL)
    await asyncio.sleep(0.5)  # a settlement, were there one, runs as the result arrives
    total = (await budget_usage(kv, spec, dt.datetime.now(dt.UTC).timestamp()))[0][2]
    assert total == len(task.to_bytes()) // 4 + 100  # the estimate, not the zero usage of the failure
