"""The original guide's Part 11 worker (DuckDBViewTool and DuckDBVectorTool silos, unchanged apart
from paths) in a real LLM worker on a real NATS server: the fake model calls both tools and sees
their real results from a real DuckDB file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.support.duckdb_data import build_records_db
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.bus import Bus
from loom.messages import TaskMessage, TaskResult, TaskStatus
from loom.settings import NatsSettings
from loom.subjects import task_subject
from loom.worker.llm_engine import LLMEngine
from loom.worker.runtime import WorkerOptions, WorkerRuntime

pytestmark = pytest.mark.integration

PART_11_SILOS = """
knowledge_silos:
  - name: "catalog"
    type: "tool"
    provider: "loom.contrib.duckdb.DuckDBViewTool"
    config:
      db_path: "/tmp/workspace/data.duckdb"
      view_name: "summaries"
      description: "Search and browse record summaries"
      max_results: 20
  - name: "similar_items"
    type: "tool"
    provider: "loom.contrib.duckdb.DuckDBVectorTool"
    config:
      db_path: "/tmp/workspace/data.duckdb"
      table_name: "records"
      result_columns: ["id", "title", "summary", "created_at"]
      embedding_column: "embedding"
      tool_name: "find_similar"
      description: "Find semantically similar records"
      embedding_model: "nomic-embed-text"
"""


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsSettings(url=nats_url, name="test-duckdb-tools"))
    yield b
    await b.close()


async def test_part_11_tools_in_the_tool_loop(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = build_records_db(tmp_path / "data.duckdb")
    silos = yaml.safe_load(PART_11_SILOS.replace("/tmp/workspace/data.duckdb", str(db)))["knowledge_silos"]
    spec = WorkerSpec(
        name="researcher", system_prompt="Answer from the records.",
        input_schema={"type": "object", "required": ["question"],
                      "properties": {"question": {"type": "string"}}},
        output_schema={"type": "object", "required": ["answer"],
                       "properties": {"answer": {"type": "string"}}},
        knowledge_silos=silos, timeout_seconds=30, max_deliver=1,
    )
    async with FakeLLMServer("openai") as model, FakeLLMServer("ollama", dimensions=8) as embed:
        monkeypatch.setenv("OLLAMA_HOST", embed.url)  # Ollama's own address variable; the YAML is unchanged
        for name, value in loopback_allowed(embed.url).items():  # what `loom up` sets for listed endpoints
            monkeypatch.setenv(name, value)
        model.push(
            Reply(tool_calls=[("summaries", {"operation": "search", "query": "sourdough"})]),
            Reply(tool_calls=[("find_similar", {"query": "Espresso extraction", "limit": 2})]),
            Reply(json={"answer": "r4 and r5"}),
        )
        tier = TierDefinition(name="standard", backend="openai", model="m", base_url=model.url)
        engine = LLMEngine(spec, tier, env={"OPENAI_API_KEY": "sk-test"} | loopback_allowed(model.url))
        runtime = WorkerRuntime(bus, spec, tier, engine, WorkerOptions(lag_interval=60))
        stop = asyncio.Event()
        run = asyncio.create_task(runtime.run(stop))
        deadline = time.monotonic() + 10
        while not runtime.ready:
            assert time.monotonic() < deadline, "worker did not bind its consumer"
            await asyncio.sleep(0.02)
        task = TaskMessage(worker_type="researcher", payload={"question": "bread?"}, model_tier="standard")
        sub = await bus.subscribe_results(task.task_id)
        await bus.publish_task(task, subject=task_subject("researcher", "standard"))
        result = TaskResult.model_validate_json(await sub.get(timeout=30))
        await sub.close()
        stop.set()
        await asyncio.wait_for(run, 30)
    assert result.status is TaskStatus.COMPLETED, result.error
    tools = {t["function"]["name"] for t in model.requests[0]["tools"]}
    assert {"summaries", "find_similar"} <= tools
    view_result = json.loads(model.requests[1]["messages"][-1]["content"])
    assert [r["id"] for r in view_result["results"]] == ["r4"]
    vector_result = json.loads(model.requests[2]["messages"][-1]["content"])
    assert vector_result["results"][0]["id"] == "r5"
    assert set(vector_result["results"][0]) == {"id", "title", "summary", "created_at", "similarity"}
    assert embed.requests[0] == {"model": "nomic-embed-text", "input": ["Espresso extraction"]}
