"""Checkpoint stores against real servers: NATS KV and Redis, one behaviour for both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from tests.fakes.llm_server import FakeLLMServer
from tests.support.orchestrators import planner, running_orchestrator, write_config
from tests.support.pipelines import wait_goal_result
from tests.support.redis_server import RedisServer
from tests.support.task_desk import TaskDesk

from loom.bus import Bus
from loom.checkpoint import REDIS_PREFIX, Checkpoint, CheckpointStore, KVCheckpointStore, RedisCheckpointStore
from loom.messages import GoalMessage, TaskMessage, TaskStatus
from loom.settings import NatsSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsSettings(url=nats_url, name="test-checkpoints"))
    yield b
    await b.close()


@pytest.fixture(params=["kv", "redis"])
async def store(request: pytest.FixtureRequest, bus: Bus) -> AsyncIterator[CheckpointStore]:
    s: CheckpointStore
    if request.param == "kv":
        s = KVCheckpointStore(bus)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = RedisCheckpointStore(server.url)
    yield s
    await s.close()


async def test_save_load_replace_delete(store: CheckpointStore) -> None:
    assert await store.load("g.missing") is None
    cp = Checkpoint(
        goal_id="g1",
        executive_summary="so far",
        completed=[{"id": "a", "output": {"x": 1}}],
        pending=[{"id": "b"}],
        decisions=["split"],
        context_tokens=42,
        data={"goal": {"goal_id": "g1"}},
    )
    await store.save("orch.g1", cp)
    loaded = await store.load("orch.g1")
    assert loaded == cp
    newer = cp.model_copy(update={"sequence": 2, "pending": []})
    await store.save("orch.g1", newer)
    again = await store.load("orch.g1")
    assert again is not None and again.sequence == 2 and again.pending == []
    await store.delete("orch.g1")
    assert await store.load("orch.g1") is None
    await store.delete("orch.g1")  # deleting twice is fine


async def test_redis_entries_carry_the_ttl(redis_server: RedisServer) -> None:
    store = RedisCheckpointStore(redis_server.url, ttl=300)
    client = redis.Redis.from_url(redis_server.url)
    try:
        await store.save("o.g", Checkpoint(goal_id="g"))
        ttl = await client.ttl(REDIS_PREFIX + "o.g")
        assert 0 < ttl <= 300
    finally:
        await client.aclose()
        await store.close()


async def test_orchestrator_checkpoints_to_redis(
    nats_url: str,
    bus: Bus,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    plan = {
        "subtasks": [
            {"id": "quick", "worker_type": "summarizer", "payload": {"text": "quick " * 30}},
            {"id": "held", "worker_type": "summarizer", "payload": {"text": "held"}},
        ]
    }
    release = asyncio.Event()

    async def summarize(task: TaskMessage) -> dict[str, Any]:
        if task.payload["text"] == "held":
            await release.wait()
        return {"summary": task.payload["text"][:10]}

    client = redis.Redis.from_url(redis_server.url)
    desk = await TaskDesk(nats_url, {"summarizer": summarize}).start()
    async with FakeLLMServer("openai", default=planner([plan])) as llm:
        config = write_config(
            tmp_path, llm.url, checkpoint={"backend": "redis", "url": redis_server.url, "token_threshold": 30}
        )
        try:
            async with running_orchestrator(config, nats_url):
                goal = GoalMessage(instruction="two")
                sub = await bus.subscribe_results(goal.goal_id)
                await bus.publish_goal(goal)
                key = f"{REDIS_PREFIX}brain.{goal.goal_id}"
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while True:
                    raw = await client.get(key)
                    if isinstance(raw, bytes) and len(Checkpoint.from_bytes(raw).completed) == 1:
                        break
                    assert loop.time() < deadline, "no checkpoint in redis"
                    await asyncio.sleep(0.02)
                assert isinstance(raw, bytes)
                cp = Checkpoint.from_bytes(raw)
                assert [p["id"] for p in cp.pending] == ["held"]
                assert "[quick] summarizer completed" in cp.executive_summary
                release.set()
                result = await wait_goal_result(sub, 30)
                await sub.close()
        finally:
            release.set()
            await desk.close()
            remaining = await client.exists(key)
            await client.aclose()
    assert result.status == TaskStatus.COMPLETED
    assert result.output is not None and set(result.output["results"]) == {"quick", "held"}
    assert remaining == 0
