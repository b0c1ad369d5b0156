"""The goal orchestrator against real NATS and a fake model server speaking the OpenAI wire format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.llm_server import FakeLLMServer
from tests.support.endpoints import loopback_allowed
from tests.support.orchestrators import planner, running_orchestrator, system_of, write_config
from tests.support.pipelines import submit, wait_goal_result
from tests.support.processes import LoomProcess
from tests.support.task_desk import TaskDesk

from loom.bus import Bus
from loom.checkpoint import KVCheckpointStore
from loom.messages import GoalMessage, TaskMessage, TaskStatus
from loom.settings import NatsSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsSettings(url=nats_url, name="test-client"))
    yield b
    await b.close()


async def summarize(task: TaskMessage) -> dict[str, Any]:
    return {"summary": task.payload["text"].upper()}


async def count(task: TaskMessage) -> dict[str, Any]:
    return {"count": len(task.payload["items"])}


async def test_decomposes_checks_schemas_feeds_back_and_merges(
    nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    first = {
        "subtasks": [
            {"id": "sum-a", "worker_type": "summarizer", "payload": {"text": "alpha"}},
            {"id": "sum-b", "worker_type": "summarizer", "payload": {"txt": "beta"}},
            {"id": "mystery", "worker_type": "translator", "payload": {"text": "x"}},
        ],
        "decisions": ["split by document"],
    }
    second = {
        "subtasks": [
            {"id": "sum-a", "worker_type": "summarizer", "payload": {"text": "alpha"}},
            {"id": "sum-b", "worker_type": "summarizer", "payload": {"text": "beta"}},
            {"id": "count", "worker_type": "counter", "payload": {"items": [1, 2, 3]}},
            {"id": "mystery", "worker_type": "translator", "payload": {"text": "x"}},
        ]
    }
    desk = await TaskDesk(nats_url, {"summarizer": summarize, "counter": count}).start()
    async with FakeLLMServer("openai", default=planner([first, second])) as llm:
        config = write_config(tmp_path, llm.url)
        try:
            async with running_orchestrator(config, nats_url):
                result = await submit(
                    bus, GoalMessage(instruction="summarize both and count", context={"n": 3})
                )
        finally:
            await desk.close()
        requests = list(llm.requests)
    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.output is not None
    assert result.output["results"] == {
        "sum-a": {"summary": "ALPHA"},
        "sum-b": {"summary": "BETA"},
        "count": {"count": 3},
    }
    assert result.output["failed"] == {}
    [rejected] = result.output["rejected"]
    assert rejected["worker_type"] == "translator" and "unknown worker_type" in rejected["reason"]
    assert sorted(s.name for s in result.stages) == ["count", "sum-a", "sum-b"]
    assert result.token_usage.prompt_tokens > 0
    # Two planning calls: the second carried the validation errors of the first.
    assert len(requests) == 2
    feedback = requests[1]["messages"][-1]["content"]
    assert "'text' is a required property" in feedback and "translator" in feedback
    # The catalog reached the planner with each worker's input schema.
    assert '"required": ["items"]' in requests[0]["messages"][-1]["content"]
    # Only valid subtasks were dispatched, each once.
    assert sorted(c.task.metadata["subtask"] for c in desk.calls) == ["count", "sum-a", "sum-b"]


async def test_llm_synthesis_and_a_goal_without_valid_subtasks(
    nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    plan = {"subtasks": [{"id": "s", "worker_type": "summarizer", "payload": {"text": "gamma"}}]}
    answer = {"answer": "GAMMA it is", "confidence": "high"}
    desk = await TaskDesk(nats_url, {"summarizer": summarize}).start()
    async with FakeLLMServer("openai", default=planner([plan], answer)) as llm:
        config = write_config(tmp_path, llm.url, synthesis="llm")
        try:
            async with running_orchestrator(config, nats_url):
                good = await submit(bus, GoalMessage(instruction="summarize"))
                llm.default = planner([{"subtasks": [{"worker_type": "nope", "payload": {}}]}])
                bad = await submit(bus, GoalMessage(instruction="impossible"))
        finally:
            await desk.close()
        synth = [r for r in llm.requests if "synthesizer" in system_of(r)]
    assert good.status == TaskStatus.COMPLETED
    assert good.output is not None and good.output["answer"] == "GAMMA it is"
    assert good.output["subtasks"]["results"] == {"s": {"summary": "GAMMA"}}
    assert len(synth) == 1 and "GAMMA" in synth[0]["messages"][-1]["content"]
    assert bad.status == TaskStatus.FAILED
    assert bad.error is not None and "no valid subtasks" in bad.error and "nope" in bad.error


async def test_checkpoint_is_written_read_back_and_survives_a_restart(
    nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    plan = {
        "subtasks": [
            {"id": "one", "worker_type": "summarizer", "payload": {"text": "first part " * 20}},
            {"id": "two", "worker_type": "summarizer", "payload": {"text": "second part " * 20}},
            {"id": "three", "worker_type": "counter", "payload": {"items": [1, 2]}},
        ]
    }
    release = asyncio.Event()

    async def slow_count(task: TaskMessage) -> dict[str, Any]:
        await release.wait()
        return await count(task)

    desk = await TaskDesk(nats_url, {"summarizer": summarize, "counter": slow_count}).start()
    store = KVCheckpointStore(bus)
    async with FakeLLMServer("openai", default=planner([plan])) as llm:
        # A tiny threshold: every result pushes the context over it, so each one is compacted.
        config = write_config(tmp_path, llm.url, checkpoint={"backend": "kv", "token_threshold": 40})
        args = ["orchestrator", "--config", str(config), "--ack-wait", "1.5"]
        env = loopback_allowed(llm.url)  # the fake planner model runs on loopback
        first = LoomProcess(args, nats_url, env).start().wait_ready()
        second: LoomProcess | None = None
        try:
            goal = GoalMessage(instruction="two summaries and a count")
            sub = await bus.subscribe_results(goal.goal_id)
            await bus.publish_goal(goal)
            key = f"brain.{goal.goal_id}"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                cp = await store.load(key)
                if cp is not None and len(cp.completed) == 2:
                    break
                assert loop.time() < deadline, "no checkpoint with two finished subtasks"
                await asyncio.sleep(0.05)
            assert [p["id"] for p in cp.pending] == ["three"]
            assert "[one] summarizer completed" in cp.executive_summary
            assert "[two] summarizer completed" in cp.executive_summary
            assert any(d.startswith("checkpoint 2:") for d in cp.decisions)
            first.kill()
            second = LoomProcess(args, nats_url, env).start().wait_ready()
            deadline = loop.time() + 20
            while "loom_orchestrator_resumed_total{" not in _nonzero(second.metrics_text()):
                assert loop.time() < deadline, "the goal was not resumed from its checkpoint"
                await asyncio.sleep(0.05)
            release.set()
            result = await wait_goal_result(sub, 30)
            await sub.close()
        finally:
            release.set()
            first.kill()
            if second is not None:
                assert second.terminate() == 0, second.log()
            await desk.close()
        planning_calls = sum(1 for r in llm.requests if "planner" in system_of(r))
    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.output is not None
    assert result.output["results"]["three"] == {"count": 2}
    assert result.output["results"]["one"] == {"summary": ("first part " * 20).upper()}
    assert planning_calls == 1  # not decomposed again after the restart
    assert sorted(c.task.metadata["subtask"] for c in desk.calls) == ["one", "three", "two"]
    assert await store.load(f"brain.{goal.goal_id}") is None  # removed once the goal finished


def _nonzero(metrics: str) -> str:
    return "\n".join(ln for ln in metrics.splitlines() if not ln.startswith("#") and not ln.endswith(" 0.0"))
