"""The router as a real process: routing by type and tier, overrides, limits, replicas."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.support.processes import (
    LoomProcesses,
    bus,
    collect,
    consumer_empty,
    echo_worker,
    loom_procs,
    poll,
    write_yaml,
)

from loom.bus import Bus
from loom.messages import DeadLetterReason, Priority, TaskMessage
from loom.subjects import ROUTER_CONSUMER, STREAM_INCOMING, STREAM_TASKS

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


def policy(tmp: Path, **spec: object) -> Path:
    return write_yaml(
        tmp,
        "policy",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "default"},
            "spec": spec,
        },
    )


async def submit(b: Bus, n: int, key: str, **fields: object) -> list[TaskMessage]:
    tasks = [TaskMessage(parent_task_id=key, **fields) for _ in range(n)]  # type: ignore[arg-type]
    await asyncio.gather(*(b.publish_task(t) for t in tasks))
    return tasks


async def test_routes_by_worker_type_and_tier(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    echo = echo_worker(tmp_path, "echo", tiers=["local", "frontier"], backend_config={"tag": "echo"})
    other = echo_worker(tmp_path, "other", backend_config={"tag": "other"})
    loom_procs.router(echo, other)
    loom_procs.worker(echo, "local")
    loom_procs.worker(echo, "frontier")
    loom_procs.worker(other, "local")
    sub = await bus.subscribe_results("k1")
    await submit(bus, 3, "k1", worker_type="echo", model_tier="frontier")
    await submit(bus, 3, "k1", worker_type="echo")  # the worker's default: local
    await submit(bus, 2, "k1", worker_type="other")
    results = await collect(sub, 8)
    seen = sorted((r["worker_type"], r["model_tier"], r["output"]["tag"]) for r in results)  # type: ignore[index]
    assert seen == sorted(
        [("echo", "frontier", "echo")] * 3
        + [("echo", "local", "echo")] * 3
        + [("other", "local", "other")] * 2
    )
    assert all(r["status"] == "completed" for r in results)


async def test_tier_override_wins_over_task_tier(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    echo = echo_worker(tmp_path, "echo", tiers=["local", "frontier"])
    pol = policy(tmp_path, tierOverrides={"echo": "frontier"})
    router = loom_procs.router(pol, echo)
    loom_procs.worker(echo, "local")
    loom_procs.worker(echo, "frontier")
    sub = await bus.subscribe_results("k2")
    await submit(bus, 4, "k2", worker_type="echo", model_tier="local")
    results = await collect(sub, 4)
    assert {r["model_tier"] for r in results} == {"frontier"}
    assert router.metric("loom_router_routed_total", worker_type="echo", tier="frontier") == 4
    assert router.metric("loom_router_routed_total", worker_type="echo", tier="local") == 0


async def test_unknown_type_and_tier_and_malformed_dead_letter(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo")  # serves local only
    router = loom_procs.router(echo)
    sub = await bus.subscribe_results("k3")
    await submit(bus, 1, "k3", worker_type="nobody")
    await submit(bus, 1, "k3", worker_type="echo", model_tier="frontier")  # defined tier, not served
    await submit(bus, 1, "k3", worker_type="echo", model_tier="galactic")  # not defined
    await bus.js_publish("loom.tasks.incoming", b"{not json")
    await bus.js_publish("loom.tasks.incoming", b'{"worker_type": "bad type!"}')
    failed = await collect(sub, 3)
    assert sorted(r["error_code"] for r in failed) == ["unknown_tier", "unknown_tier", "unknown_worker_type"]
    await poll(lambda: _count_dead(bus, 5))
    dls = {d.dead_letter.original: d.dead_letter for d in await bus.dead_letters()}
    assert dls["{not json"].reason == DeadLetterReason.MALFORMED
    assert dls['{"worker_type": "bad type!"}'].reason == DeadLetterReason.MALFORMED
    assert "worker_type" in dls['{"worker_type": "bad type!"}'].detail
    reasons = sorted(d.reason.value for d in dls.values())
    assert reasons == ["malformed", "malformed", "unknown_tier", "unknown_tier", "unknown_worker_type"]
    # the settling, and then the count, follow the dead letter
    await poll(lambda: consumer_empty(bus, STREAM_INCOMING, ROUTER_CONSUMER))
    await poll(lambda: router.metric("loom_dead_letters_total", reason="malformed", role="router") == 2)
    assert await bus.stream_messages(STREAM_TASKS) == 0


async def _count_dead(b: Bus, n: int) -> bool:
    return len(await b.dead_letters()) >= n


async def test_requests_per_minute_holds_then_dead_letters(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo")
    pol = policy(tmp_path, rateLimits={"local": {"requestsPerMinute": 6}}, onLimit={"maxWaitSeconds": 1.5})
    router = loom_procs.router(pol, echo)
    loom_procs.worker(echo, "local")
    sub = await bus.subscribe_results("k4")
    await submit(bus, 20, "k4", worker_type="echo")
    results = await collect(sub, 20, timeout=20)
    done = [r for r in results if r["status"] == "completed"]
    limited = [r for r in results if r.get("error_code") == "rate_limited"]
    # bucket of 6, refilled at 0.1/s: within the 1.5 s wait at most one more fits
    assert 6 <= len(done) <= 7, len(done)
    assert len(done) + len(limited) == 20
    await poll(lambda: _count_dead(bus, len(limited)))
    assert {d.dead_letter.reason for d in await bus.dead_letters()} == {DeadLetterReason.RATE_LIMITED}
    assert router.metric("loom_rate_limit_rejections_total", tier="local") == len(limited)
    assert router.metric("loom_rate_limit_waits_total", tier="local") >= len(limited)


async def test_tokens_per_minute_estimated_from_payload(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo", max_output_tokens=100)
    pol = policy(tmp_path, rateLimits={"local": {"tokensPerMinute": 1000}}, onLimit={"maxWaitSeconds": 30})
    loom_procs.router(pol, echo)  # no worker: nothing comes back to refund the estimates
    text = "x" * 1200  # ~300 input tokens + 100 output = ~400 (+ envelope) per task
    await submit(bus, 6, "k5", worker_type="echo", payload={"text": text})
    await poll(lambda: _stored(bus, 2))
    await asyncio.sleep(0.5)  # would be enough for more to slip through if the limit leaked
    assert await bus.stream_messages(STREAM_TASKS) == 2


async def _stored(b: Bus, n: int) -> bool:
    return await b.stream_messages(STREAM_TASKS) >= n


async def test_max_concurrent_released_by_results(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo")
    pol = policy(tmp_path, rateLimits={"local": {"maxConcurrent": 2}}, onLimit={"maxWaitSeconds": 60})
    router = loom_procs.router(pol, echo)
    sub = await bus.subscribe_results("k6")
    await submit(bus, 7, "k6", worker_type="echo")
    await poll(lambda: _stored(bus, 2))
    await poll(lambda: router.metric("loom_rate_limit_waiting", tier="local") == 5, timeout=5)
    assert await bus.stream_messages(STREAM_TASKS) == 2
    assert router.metric("loom_tier_in_flight", tier="local") == 2
    loom_procs.worker(echo, "local")
    results = await collect(sub, 7)
    assert all(r["status"] == "completed" for r in results)


async def test_a_dispatch_whose_result_never_comes_back_is_released_after_the_lease(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo")
    pol = policy(tmp_path, rateLimits={"local": {"maxConcurrent": 1}}, onLimit={"maxWaitSeconds": 60})
    # No worker: the first dispatch is never answered; only the lease gives its place to the next task.
    router = loom_procs.router(pol, echo, extra=("--inflight-lease-seconds", "1", "--ack-wait", "3"))
    await submit(bus, 2, "k9", worker_type="echo")
    await poll(lambda: _stored(bus, 1))
    assert router.metric("loom_tier_in_flight", tier="local") <= 1
    await poll(lambda: _stored(bus, 2), timeout=15)
    assert "released 1 dispatches whose results never came back" in router.log()


async def test_waiting_tasks_run_by_priority(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    echo = echo_worker(tmp_path, "echo", max_in_flight=1)
    pol = policy(tmp_path, rateLimits={"local": {"maxConcurrent": 1}}, onLimit={"maxWaitSeconds": 60})
    router = loom_procs.router(pol, echo)
    sub = await bus.subscribe_results("k7")
    first = TaskMessage(parent_task_id="k7", worker_type="echo", payload={"n": "first"})
    await bus.publish_task(first)
    await poll(lambda: _stored(bus, 1))
    for prio in (Priority.LOW, Priority.NORMAL, Priority.CRITICAL, Priority.HIGH):
        await bus.publish_task(
            TaskMessage(parent_task_id="k7", worker_type="echo", priority=prio, payload={"n": prio.name})
        )
    await poll(lambda: router.metric("loom_rate_limit_waiting", tier="local") == 4, timeout=5)
    loom_procs.worker(echo, "local")
    results = await collect(sub, 5)
    order = [r["output"]["echo"]["n"] for r in results]  # type: ignore[index]
    assert order == ["first", "CRITICAL", "HIGH", "NORMAL", "LOW"]


async def test_tenant_limits_apply_per_tenant(tmp_path: Path, loom_procs: LoomProcesses, bus: Bus) -> None:
    echo = echo_worker(tmp_path, "echo")
    pol = policy(
        tmp_path,
        tenantLimits={"overrides": {"small": {"requestsPerMinute": 3}}},
        onLimit={"maxWaitSeconds": 1},
    )
    loom_procs.router(pol, echo)
    loom_procs.worker(echo, "local")
    # Each tenant's results arrive on its own subject (loom.results.tenant.<t>.<key>).
    subs = [await bus.subscribe_results("k8", tenant) for tenant in ("small", "big")]
    await submit(bus, 6, "k8", worker_type="echo", tenant="small")
    await submit(bus, 6, "k8", worker_type="echo", tenant="big")
    results = [r for sub in subs for r in await collect(sub, 6)]
    by = {(r["tenant"], r["status"]) for r in results}
    done_small = sum(1 for r in results if r["tenant"] == "small" and r["status"] == "completed")
    done_big = sum(1 for r in results if r["tenant"] == "big" and r["status"] == "completed")
    assert done_big == 6
    assert done_small == 3, by


async def test_two_routers_route_each_task_exactly_once(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus
) -> None:
    echo = echo_worker(tmp_path, "echo", max_in_flight=64)
    r1 = loom_procs.router(echo, extra=("--batch", "16"))
    r2 = loom_procs.router(echo, extra=("--batch", "16"))
    n = 1000
    tasks = await submit(bus, n, "k9", worker_type="echo")
    await poll(lambda: _stored(bus, n), timeout=60)
    # A router acknowledges the incoming message after the routed copy is stored, and counts it after that.
    await poll(lambda: consumer_empty(bus, STREAM_INCOMING, ROUTER_CONSUMER))
    await poll(lambda: sum(r.metric("loom_router_routed_total") for r in (r1, r2)) >= n)
    routed = [r.metric("loom_router_routed_total") for r in (r1, r2)]
    assert sum(routed) == n and all(x > 0 for x in routed), routed
    assert await bus.stream_messages(STREAM_TASKS) == n
    sub = await bus.subscribe_results("k9")
    loom_procs.worker(echo, "local")
    results = await collect(sub, n, timeout=60)
    assert sorted(r["task_id"] for r in results) == sorted(t.task_id for t in tasks)
    with pytest.raises(TimeoutError):
        await sub.get(timeout=0.5)  # and nothing twice
