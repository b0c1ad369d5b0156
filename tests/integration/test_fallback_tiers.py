"""Provider fallback end to end: real ``loom router`` and ``loom worker`` processes, fake providers
speaking the OpenAI wire format, the first tier's returning 5xx or 429 forever."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.support.endpoints import loopback_allowed
from tests.support.processes import LoomProcesses, bus, collect, loom_procs, poll, write_yaml

from loom.api.router_policy import RouterPolicySpec
from loom.bus import Bus
from loom.messages import TaskMessage
from loom.router.budget_ledger import budget_usage
from loom.router.budgets import BUDGETS_BUCKET, BUDGETS_TTL

pytestmark = pytest.mark.integration
__all__ = ["bus", "loom_procs"]


@pytest.fixture
async def down() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("openai", default=lambda _: Reply(status=503, error="overloaded")) as s:
        yield s


@pytest.fixture
async def up() -> AsyncIterator[FakeLLMServer]:
    answer = Reply(json={"ok": True}, model="spare-model", prompt_tokens=40, completion_tokens=10)
    async with FakeLLMServer("openai", default=lambda _: answer) as s:
        yield s


def _spec(down: FakeLLMServer, up: FakeLLMServer) -> dict[str, Any]:
    tier = {"backend": "openai", "apiKeyEnv": "FAKE_KEY", "maxRetries": 1, "timeoutSeconds": 5}
    return {
        "tiers": [
            {"name": "main", "model": "main-model", "baseUrl": down.url, "fallback": ["spare"], **tier},
            {"name": "spare", "model": "spare-model", "baseUrl": up.url, **tier},
        ],
        "modelEndpoints": {"allowedUrls": [down.root_url, up.root_url]},
        "budgets": {"tiers": {"main": {"tokensPerDay": 10_000}, "spare": {"tokensPerDay": 10_000}}},
    }


async def test_the_next_tier_answers_when_the_first_returns_5xx_or_429_forever(
    tmp_path: Path, loom_procs: LoomProcesses, bus: Bus, down: FakeLLMServer, up: FakeLLMServer
) -> None:
    spec = _spec(down, up)
    meta = {"apiVersion": "loom.dev/v1alpha1", "metadata": {"name": "default"}}
    policy = write_yaml(tmp_path, "policy", {**meta, "kind": "RouterPolicy", "spec": spec})
    worker = write_yaml(
        tmp_path,
        "worker",
        {
            **meta,
            "kind": "Worker",
            "metadata": {"name": "judge"},
            "spec": {
                "name": "judge",
                "systemPrompt": "Answer ok.",
                "outputSchema": {"type": "object", "required": ["ok"]},
                "defaultModelTier": "main",
                "maxDeliver": 1,
                "maxOutputTokens": 100,
            },
        },
    )
    router = loom_procs.router(policy, worker)
    env = {"FAKE_KEY": "sk-fake", **loopback_allowed(down.url, up.url)}
    proc = loom_procs.worker(worker, "main", extra=("--policy", str(policy)), env=env)
    sub = await bus.subscribe_results("fb")

    await bus.publish_task(TaskMessage(parent_task_id="fb", worker_type="judge", payload={"q": 1}))
    [first] = await collect(sub, 1, timeout=60)
    assert first["status"] == "completed", first.get("error")
    assert (first["model_tier"], first["model_used"]) == ("spare", "spare-model")
    assert len(down.requests) == 2  # the first tier's call and its one retry, then the next tier
    assert len(up.requests) == 1

    down.default = lambda _: Reply(status=429, headers={"retry-after-ms": "20"}, error="slow down")
    before = len(down.requests)
    await bus.publish_task(TaskMessage(parent_task_id="fb", worker_type="judge", payload={"q": 2}))
    [second] = await collect(sub, 1, timeout=60)
    assert (second["status"], second["model_tier"]) == ("completed", "spare")
    assert len(down.requests) - before <= 2  # at most the call and its retry (none once the circuit opens)
    assert proc.metric("loom_llm_fallback_total", tier="main", answered_by="spare") == 2

    # a bad request is not the provider's absence: no fallback
    down.default = lambda _: Reply(status=400, error="bad request")
    served = len(up.requests)
    await bus.publish_task(TaskMessage(parent_task_id="fb", worker_type="judge", payload={"q": 3}))
    [third] = await collect(sub, 1, timeout=60)
    assert third["status"] == "failed" and third["model_tier"] == "main"
    assert len(up.requests) == served

    # budgets are charged to the tier that answered (50 tokens each), the first tier's given back
    kv = await bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL)
    now = dt.datetime.now(dt.UTC).timestamp()
    expected = {"tier:main/tokens/day": 0, "tier:spare/tokens/day": 100}

    async def settled() -> bool:
        usage = await budget_usage(kv, RouterPolicySpec.model_validate(spec), now)
        return {b.label: n for b, _, n in usage} == expected

    await poll(settled, timeout=10)
    await poll(lambda: router.metric("loom_budget_used", budget="tier:spare/tokens/day") == 100)
