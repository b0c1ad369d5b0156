"""Pipelines with their goal states in Redis (a real redis-server), through the state-store interface
the orchestrator's checkpoints use too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY
from tests.support.pipelines import running_pipeline, submit, wait_goal_result
from tests.support.processes import LoomProcesses
from tests.support.redis_server import RedisServer
from tests.support.task_desk import TaskDesk

from loom.bus import Bus
from loom.checkpoint import Checkpoint, RedisCheckpointStore
from loom.messages import GoalMessage, TaskMessage, TaskStatus
from loom.pipeline.service import PipelineOptions
from loom.pipeline.state import STATE_BUCKET, STATE_REDIS_PREFIX, GoalState, state_key
from loom.settings import NatsSettings
from loom.state_store import open_key_value_store

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsSettings(url=nats_url, name="test-client"))
    yield b
    await b.close()


async def test_goal_state_lives_in_redis_and_a_resubmitted_goal_reuses_it(
    nats_url: str, bus: Bus, redis_server: RedisServer
) -> None:
    async def echo(task: TaskMessage) -> dict[str, Any]:
        return {"echo": task.payload}

    desk = await TaskDesk(nats_url, {"echo": echo}).start()
    spec = {
        "name": "in-redis",
        "pipeline_stages": [{"name": "s", "worker_type": "echo", "input_mapping": {"x": "goal.context.x"}}],
    }
    goal = GoalMessage(pipeline="in-redis", context={"x": 7})
    try:
        async with running_pipeline(nats_url, spec, PipelineOptions(state_url=redis_server.url)):
            first = await submit(bus, goal)
            second = await submit(bus, goal)
    finally:
        await desk.close()
    assert first.status == TaskStatus.COMPLETED and second.model_dump() == first.model_dump()
    assert desk.count() == 1
    client = redis.Redis.from_url(redis_server.url)
    raw = await client.get(STATE_REDIS_PREFIX + state_key("in-redis", goal.goal_id))
    ttl = await client.ttl(STATE_REDIS_PREFIX + state_key("in-redis", goal.goal_id))
    await client.aclose()
    assert raw is not None and GoalState.from_bytes(raw).status == "finished"
    assert 0 < ttl <= 2 * 86400
    # nothing in the NATS bucket
    assert await bus.key_value_store(STATE_BUCKET).get(state_key("in-redis", goal.goal_id)) is None


async def test_a_restarted_pipeline_resumes_from_redis(
    nats_url: str, bus: Bus, redis_server: RedisServer
) -> None:
    release = asyncio.Event()

    async def step(task: TaskMessage) -> dict[str, Any]:
        if task.metadata["stage"] == "second":
            await release.wait()
        return {"by": task.metadata["stage"]}

    spec = {
        "name": "resume-redis",
        "pipeline_stages": [
            {"name": "first", "worker_type": "step", "input_mapping": {"x": "goal.context.x"}},
            {
                "name": "second",
                "worker_type": "step",
                "timeout_seconds": 60,
                "input_mapping": {"x": "first.output.by"},
            },
        ],
    }
    options = PipelineOptions(state_url=redis_server.url, ack_wait=1.5, drain_grace=0.1)
    desk = await TaskDesk(nats_url, {"step": step}).start()
    goal = GoalMessage(pipeline="resume-redis", context={"x": 1})
    sub = await bus.subscribe_results(goal.goal_id)
    try:
        async with running_pipeline(nats_url, spec, options):
            await bus.publish_goal(goal)
            for _ in range(500):
                if desk.counts_by_stage().get("second") == 1:
                    break
                await asyncio.sleep(0.02)
            assert desk.counts_by_stage() == {"first": 1, "second": 1}
        resumed = _resumed("resume-redis")
        async with running_pipeline(nats_url, spec, options):
            # Hold stage two until the new service has read the goal's state back from Redis.
            for _ in range(1000):
                if _resumed("resume-redis") > resumed:
                    break
                await asyncio.sleep(0.02)
            assert _resumed("resume-redis") == resumed + 1
            release.set()
            result = await wait_goal_result(sub, 30)
    finally:
        release.set()
        await sub.close()
        await desk.close()
    assert result.status == TaskStatus.COMPLETED, result.error
    assert desk.counts_by_stage() == {"first": 1, "second": 1}  # the first stage was not run again


def _resumed(pipeline: str) -> float:
    return REGISTRY.get_sample_value("loom_goals_resumed_total", {"pipeline": pipeline}) or 0.0


async def test_checkpoints_and_states_share_one_interface(bus: Bus, redis_server: RedisServer) -> None:
    store = open_key_value_store(redis_server.url, bus, bucket="unused", prefix="loom:test:", ttl=60)
    await store.put("k", b"v")
    assert await store.get("k") == b"v"
    await store.delete("k")
    assert await store.get("k") is None
    await store.close()
    checkpoints = RedisCheckpointStore(redis_server.url, ttl=60)
    await checkpoints.save("g1", Checkpoint(goal_id="g1", executive_summary="half way"))
    loaded = await checkpoints.load("g1")
    await checkpoints.close()
    assert loaded is not None and loaded.executive_summary == "half way"
    with pytest.raises(ValueError, match="use nats"):
        open_key_value_store("http://example", bus, bucket="b", prefix="p", ttl=None)


PIPELINE_IN_REDIS = """\
apiVersion: loom.dev/v1alpha1
kind: Pipeline
metadata:
  name: spec-redis
spec:
  stateStore:
    backend: redis
    urlSecretRef: {name: loom-redis, key: url}
    urlEnv: TEST_PIPELINE_REDIS
  pipelineStages:
    - name: s
      workerType: echo
      inputMapping: {x: goal.context.x}
"""


async def test_a_pipeline_manifest_chooses_redis_and_reads_the_url_from_its_variable(
    nats_url: str, bus: Bus, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The ``loom pipeline`` process of a manifest with ``stateStore: redis`` keeps goal states in Redis
    (on a cluster the operator sets ``urlEnv`` from the Secret); without the variable it exits with why."""
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(PIPELINE_IN_REDIS)
    procs = LoomProcesses(nats_url)
    try:
        missing = procs.spawn("pipeline", "--config", str(manifest), ready=False)
        assert missing.proc is not None and missing.proc.wait(30) == 2
        assert "TEST_PIPELINE_REDIS is not set" in missing.log()
        assert "Secret 'loom-redis', key 'url'" in missing.log()

        async def echo(task: TaskMessage) -> dict[str, Any]:
            return {"echo": task.payload}

        desk = await TaskDesk(nats_url, {"echo": echo}).start()
        try:
            procs.spawn("pipeline", "--config", str(manifest), env={"TEST_PIPELINE_REDIS": redis_server.url})
            goal = GoalMessage(pipeline="spec-redis", context={"x": 3})
            result = await submit(bus, goal)
        finally:
            await desk.close()
    finally:
        for p in procs.procs:
            p.cleanup()
    assert result.status == TaskStatus.COMPLETED, result.error
    client = redis.Redis.from_url(redis_server.url)
    raw = await client.get(STATE_REDIS_PREFIX + state_key("spec-redis", goal.goal_id))
    await client.aclose()
    assert raw is not None and GoalState.from_bytes(raw).status == "finished"
    assert await bus.key_value_store(STATE_BUCKET).get(state_key("spec-redis", goal.goal_id)) is None
