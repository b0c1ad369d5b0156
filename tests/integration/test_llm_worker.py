"""LLM workers through the real worker runtime on a real NATS server, against fake providers
speaking each provider's wire format (and, marked slow, a real local model)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.fakes.llm_server import FakeLLMServer, Reply, last_user_text
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.bus import Bus
from loom.messages import DeadLetterReason, TaskMessage, TaskResult, TaskStatus
from loom.settings import NatsSettings
from loom.subjects import task_subject
from loom.worker.llm_engine import LLMEngine
from loom.worker.runtime import WorkerOptions, WorkerRuntime

pytestmark = pytest.mark.integration

ENV = {"ANTHROPIC_API_KEY": "sk-ant-test", "OPENAI_API_KEY": "sk-test"}
OUT = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}


def worker_spec(**kw: Any) -> WorkerSpec:
    base: dict[str, Any] = {
        "name": "classifier",
        "system_prompt": "Classify the text.",
        "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        "output_schema": OUT,
        "max_deliver": 2,
        "retry_backoff_seconds": [0.05],
        "timeout_seconds": 20,
    }
    return WorkerSpec(**(base | kw))


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsSettings(url=nats_url, name="test-llm-worker"))
    yield b
    await b.close()


@pytest.fixture(params=["openai", "anthropic", "ollama"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(request.param) as server:
        yield server


Start = Callable[..., Awaitable[None]]


@pytest.fixture
async def start_worker(bus: Bus, fake: FakeLLMServer) -> AsyncIterator[Start]:
    """Run a WorkerRuntime with an LLMEngine pointed at the fake, until the test ends."""
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(spec: WorkerSpec, **tier_kw: Any) -> None:
        tier = TierDefinition(name="standard", backend=fake.kind, model="m-1", base_url=fake.url, **tier_kw)
        engine = LLMEngine(spec, tier, env=ENV | loopback_allowed(fake.url))
        runtime = WorkerRuntime(bus, spec, tier, engine, WorkerOptions(lag_interval=60))
        stop = asyncio.Event()
        stops.append((stop, asyncio.create_task(runtime.run(stop))))
        deadline = time.monotonic() + 10
        while not runtime.ready:
            assert time.monotonic() < deadline, "worker did not bind its consumer"
            await asyncio.sleep(0.02)

    yield start
    for stop, task in stops:
        stop.set()
        await asyncio.wait_for(task, 30)


async def submit(bus: Bus, payload: dict[str, Any], wait: float = 15) -> TaskResult:
    task = TaskMessage(worker_type="classifier", payload=payload, model_tier="standard")
    sub = await bus.subscribe_results(task.task_id)
    try:
        await bus.publish_task(task, subject=task_subject("classifier", "standard"))
        return TaskResult.model_validate_json(await sub.get(timeout=wait))
    finally:
        await sub.close()


async def test_cached_tokens_reach_the_published_result(
    bus: Bus, fake: FakeLLMServer, start_worker: Start
) -> None:
    """The result on the bus keeps the provider's cached input apart from its fresh input."""
    await start_worker(worker_spec())
    answer = {"label": "greeting", "score": 2}
    if fake.kind == "anthropic":  # input_tokens excludes the cached share
        fake.push(
            Reply(
                json=answer,
                prompt_tokens=31,
                completion_tokens=6,
                cache_read_tokens=900,
                cache_write_tokens=40,
            )
        )
        expected = (31, 6, 900, 40)
    else:  # OpenAI and Ollama count the cached share inside the prompt count
        fake.push(Reply(json=answer, prompt_tokens=931, completion_tokens=6, cache_read_tokens=900))
        expected = (31, 6, 900, 0)
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.COMPLETED, result.error
    u = result.token_usage
    assert (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_write_tokens) == expected


async def test_rate_limited_then_success(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    await start_worker(worker_spec())
    fake.push(
        Reply(status=429, headers={"retry-after-ms": "100"}),
        Reply(
            json={"label": "greeting", "score": 2}, prompt_tokens=31, completion_tokens=6, model="m-1-served"
        ),
    )
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.output == {"label": "greeting", "score": 2}
    assert (result.token_usage.prompt_tokens, result.token_usage.completion_tokens) == (31, 6)
    assert result.model_used == "m-1-served"
    assert result.model_tier == "standard"
    assert len(fake.requests) == 2


async def test_server_errors_retried(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    await start_worker(worker_spec())
    fake.push(
        Reply(status=500), Reply(status=529, error="Overloaded"), Reply(json={"label": "x", "score": 1})
    )
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.attempt == 1
    assert len(fake.requests) == 3


async def test_timeout_then_redelivered(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    await start_worker(worker_spec(), timeout_seconds=0.3, max_retries=0)
    fake.push(
        Reply(json={"label": "late", "score": 1}, delay=5), Reply(json={"label": "on time", "score": 1})
    )
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.output == {"label": "on time", "score": 1}
    assert result.attempt == 2  # the first delivery timed out and JetStream redelivered it


async def test_timeout_every_time_is_a_dead_letter(
    bus: Bus, fake: FakeLLMServer, start_worker: Start
) -> None:
    await start_worker(worker_spec(max_deliver=1), timeout_seconds=0.2, max_retries=0)
    fake.push(Reply(json={"label": "late", "score": 1}, delay=5))
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.FAILED
    assert result.error_code == "provider_timeout"
    letters = await bus.dead_letters()
    assert [d.dead_letter.reason for d in letters] == [DeadLetterReason.TIMEOUT]


async def test_malformed_json_fixed_on_retry(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    await start_worker(worker_spec())
    fake.push(Reply(text="Sure! {label: x"), Reply(text='Here: {"label": "x", "score": 4}'))
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.output == {"label": "x", "score": 4}
    assert "no JSON object found" in last_user_text(fake.requests[1])
    assert result.token_usage.prompt_tokens == 22  # both calls counted


async def test_schema_breaking_then_fixed(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    await start_worker(worker_spec())
    fake.push(Reply(json={"label": "x", "score": "high"}), Reply(json={"label": "x", "score": 9}))
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.output == {"label": "x", "score": 9}
    assert "score: 'high' is not of type 'integer'" in last_user_text(fake.requests[1])


async def test_never_valid_is_failed_with_errors_and_dead_lettered(
    bus: Bus, fake: FakeLLMServer, start_worker: Start
) -> None:
    await start_worker(worker_spec(max_deliver=1, output_retries=1))
    fake.push(Reply(json={"label": 1, "score": 1}), Reply(json={"label": 2, "score": 1}))
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.FAILED
    assert result.error_code == "invalid_output"
    assert result.metadata["validation_errors"] == ["label: 2 is not of type 'string'"]
    letters = await bus.dead_letters()
    assert len(letters) == 1 and "invalid_output" in letters[0].dead_letter.detail
    assert len(fake.requests) == 2


async def test_tool_calls_round_trip(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    tools = [{"name": "calc", "type": "tool", "provider": "tests.fakes.tools.Adder"}]
    await start_worker(worker_spec(knowledge_silos=tools))
    fake.push(Reply(tool_calls=[("add", {"a": 20, "b": 22})]), Reply(json={"label": "sum", "score": 42}))
    result = await submit(bus, {"text": "add 20 and 22"})
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.output == {"label": "sum", "score": 42}
    assert '{\\"sum\\": 42}' in json.dumps(fake.requests[1])
    assert result.token_usage.completion_tokens == 14


async def test_bad_input_never_reaches_the_model(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    await start_worker(worker_spec())
    result = await submit(bus, {"body": "no text field"})
    assert result.status is TaskStatus.FAILED and result.error_code == "invalid_input"
    assert fake.requests == []


async def test_tasks_do_not_see_each_other(bus: Bus, fake: FakeLLMServer, start_worker: Start) -> None:
    await start_worker(worker_spec())
    fake.push(Reply(json={"label": "ONE-ANSWER", "score": 1}))
    await submit(bus, {"text": "ONE-SECRET"})
    fake.push(Reply(json={"label": "two", "score": 2}))
    await submit(bus, {"text": "two"})
    second = json.dumps(fake.requests[1])
    assert "ONE-SECRET" not in second and "ONE-ANSWER" not in second


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
async def test_loom_worker_cli(bus: Bus, fake: FakeLLMServer, nats_url: str, tmp_path: Path) -> None:
    """``loom worker --config F --tier T`` with the tier from LOOM_TIER_CONFIG, as a real process."""
    config = tmp_path / "classifier.yaml"
    config.write_text(yaml.safe_dump(worker_spec().model_dump(mode="json", exclude_none=True)))
    tier = TierDefinition(
        name="standard", backend="openai", model="m-cli", base_url=fake.url, api_key_env="CLI_KEY"
    )
    env = {
        **os.environ,
        "LOOM_TIER_CONFIG": tier.model_dump_json(),
        "CLI_KEY": "sk-cli-secret",
        "LOOM_NATS_URL": nats_url,
        "LOOM_METRICS_PORT": "0",
        **loopback_allowed(fake.url),
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - the worker under test is a real process
            [sys.executable, "-m", "loom.cli.main", "worker", "--config", str(config), "--tier", "standard"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        fake.push(
            Reply(status=429, headers={"retry-after-ms": "50"}), Reply(json={"label": "cli", "score": 1})
        )
        result = await submit(bus, {"text": "via the CLI"}, wait=60)
        assert result.status is TaskStatus.COMPLETED, result.error
        assert result.output == {"label": "cli", "score": 1}
        assert result.model_used == "m-cli"
        assert fake.headers[-1]["authorization"] == "Bearer sk-cli-secret"
    finally:
        proc.terminate()
        proc.wait(30)
    assert "sk-cli-secret" not in log.read_text()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from loom.llm.local_server import LocalLlamaPool, LocalModelUnavailable

    log = tmp_path_factory.mktemp("llama") / "server.log"
    # One request at a time here: one server (LOOM_LOCAL_SERVERS runs more, behind the balancer).
    server = LocalLlamaPool(n_ctx=2048, log_path=log)
    try:
        server.start(wait_seconds=180)
    except LocalModelUnavailable as exc:
        pytest.fail(f"{exc}")
    yield server
    server.stop()


@pytest.mark.slow
async def test_real_local_model_gives_a_schema_valid_result(bus: Bus, llama_server: Any) -> None:
    """SmolLM2-135M behind llama.cpp's OpenAI-compatible server, schema-constrained decoding."""
    schema = {
        "type": "object",
        "required": ["sentiment", "is_question"],
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "is_question": {"type": "boolean"},
        },
        "additionalProperties": False,
    }
    spec = worker_spec(
        system_prompt="You judge the sentiment of a short text.",
        output_schema=schema,
        max_output_tokens=64,
        timeout_seconds=120,
        max_deliver=1,
    )
    tier = TierDefinition(
        name="standard", backend="local", base_url=llama_server.base_url, timeout_seconds=120
    )
    engine = LLMEngine(spec, tier, env=loopback_allowed(llama_server.base_url))
    runtime = WorkerRuntime(bus, spec, tier, engine, WorkerOptions(lag_interval=60))
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    try:
        result = await submit(bus, {"text": "I love this wonderful sunny day!"}, wait=150)
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    assert result.status is TaskStatus.COMPLETED, result.error
    assert result.output is not None
    assert result.output["sentiment"] in ("positive", "negative", "neutral")
    assert isinstance(result.output["is_question"], bool)
    assert result.token_usage.prompt_tokens > 0 and result.token_usage.completion_tokens > 0
    assert result.model_used


async def test_invalid_output_is_final_and_reports_the_tokens_it_spent(
    bus: Bus, fake: FakeLLMServer, start_worker: Start
) -> None:
    """A model that keeps breaking the schema costs 1 + output_retries calls, not that x max_deliver."""
    await start_worker(worker_spec(max_deliver=3, output_retries=2))  # every default reply breaks OUT
    result = await submit(bus, {"text": "hello"})
    assert result.status is TaskStatus.FAILED and result.error_code == "invalid_output"
    assert result.attempt == 1
    assert result.token_usage.prompt_tokens == 3 * 11 and result.token_usage.completion_tokens == 3 * 7
    await asyncio.sleep(0.5)  # a redelivery (backoff 0.05 s) would have called the model again by now
    assert len(fake.requests) == 3
    letters = await bus.dead_letters()
    assert [d.dead_letter.reason for d in letters] == [DeadLetterReason.INVALID_OUTPUT]
