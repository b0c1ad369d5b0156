"""Model endpoints are an allow-list: a tier pointed at a service outside it gets nothing, not even
the API key, and what a provider says in an error body never reaches a result or a dead letter.

Real worker runtime on a real NATS server; the "internal service" is a real HTTP server whose
request log is asserted on.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.bus import Bus
from loom.llm.base import ChatRequest, Message
from loom.llm.errors import EndpointNotAllowed
from loom.llm.factory import build_provider
from loom.messages import TaskMessage, TaskResult, TaskStatus
from loom.settings import NatsSettings
from loom.subjects import task_subject
from loom.worker.llm_engine import LLMEngine
from loom.worker.runtime import WorkerOptions, WorkerRuntime

pytestmark = pytest.mark.integration

API_KEY = "sk-secret-tier-key"
SECRET = "internal-service-secret-7f3a"


def worker_spec() -> WorkerSpec:
    return WorkerSpec(
        name="classifier",
        system_prompt="Classify the text.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        output_schema={"type": "object", "properties": {"label": {"type": "string"}}},
        max_deliver=1,
        timeout_seconds=20,
    )


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(NatsSettings(url=nats_url, name="test-endpoint-security"))
    yield b
    await b.close()


@pytest.fixture
async def service() -> AsyncIterator[FakeLLMServer]:
    """An HTTP service on loopback that answers every request with a secret in its error body."""
    async with FakeLLMServer("openai") as server:
        yield server


async def run_one(bus: Bus, tier: TierDefinition, env: dict[str, str]) -> TaskResult:
    """Run a worker for ``tier`` under ``env`` and return the result of one task."""
    spec = worker_spec()
    runtime = WorkerRuntime(bus, spec, tier, LLMEngine(spec, tier, env=env), WorkerOptions(lag_interval=60))
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    try:
        deadline = time.monotonic() + 10
        while not runtime.ready:
            assert not running.done(), f"worker stopped: {running.exception() if running.done() else ''}"
            assert time.monotonic() < deadline, "worker did not bind its consumer"
            await asyncio.sleep(0.02)
        task = TaskMessage(worker_type="classifier", payload={"text": "hi"}, model_tier="standard")
        sub = await bus.subscribe_results(task.task_id)
        try:
            await bus.publish_task(task, subject=task_subject("classifier", "standard"))
            return TaskResult.model_validate_json(await sub.get(timeout=15))
        finally:
            await sub.close()
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def test_unlisted_loopback_service_gets_no_request_and_no_key(bus: Bus, service: FakeLLMServer) -> None:
    """Pointed at a loopback service outside the allow-list, the worker refuses before any request."""
    tier = TierDefinition(
        name="standard", backend="openai", model="m", base_url=service.url, api_key_env="TIER_KEY"
    )
    listed_elsewhere = loopback_allowed("http://127.0.0.1:1")  # local mode, but another origin listed
    env = {"TIER_KEY": API_KEY, **listed_elsewhere}
    engine = LLMEngine(worker_spec(), tier, env=env)
    with pytest.raises(ValueError, match=r"is not in modelEndpoints\.allowedUrls"):
        await engine.start()
    assert service.requests == [] and service.headers == []


async def test_listed_name_resolving_to_a_refused_address_is_refused_per_request() -> None:
    """A listed name is resolved before each call; an address in a refused range stops the call."""
    tier = TierDefinition(name="standard", backend="openai", model="m", base_url="http://localhost:9/v1")
    env = {
        "OPENAI_API_KEY": API_KEY,
        "LOOM_MODEL_ENDPOINTS": json.dumps({"allowedUrls": ["http://localhost:9"]}),
    }
    provider = build_provider(tier, env=env)  # the name is listed; only resolving it shows loopback
    with pytest.raises(
        EndpointNotAllowed, match=r"localhost resolves to .* loopback, allowed only in local mode"
    ):
        await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    await provider.close()


async def test_error_bodies_stay_out_of_results_and_dead_letters(bus: Bus, service: FakeLLMServer) -> None:
    """A provider's error body (here holding a secret) never reaches the result or the dead letter."""
    tier = TierDefinition(
        name="standard",
        backend="openai",
        model="m",
        base_url=service.url,
        api_key_env="TIER_KEY",
        max_retries=0,
    )
    env = {"TIER_KEY": API_KEY, **loopback_allowed(service.url)}
    body = json.dumps({"error": {"type": "invalid_request_error", "message": SECRET}, "leak": SECRET})
    service.push(Reply(status=400, body=body))
    result = await run_one(bus, tier, env)
    assert result.status is TaskStatus.FAILED
    assert result.error_code == "provider_bad_request"
    assert "HTTP 400 (invalid_request_error)" in (result.error or "")
    assert SECRET not in result.model_dump_json()
    letters = await bus.dead_letters()
    assert len(letters) == 1
    assert SECRET not in letters[0].dead_letter.model_dump_json()
    assert len(service.requests) == 1  # listed: the request was made, with the key
    assert service.headers[0]["authorization"] == f"Bearer {API_KEY}"


async def test_unreadable_success_body_stays_out_of_the_result(bus: Bus, service: FakeLLMServer) -> None:
    """A 200 that is not a chat completion (an internal page) fails without quoting it."""
    tier = TierDefinition(name="standard", backend="openai", model="m", base_url=service.url, max_retries=0)
    env = loopback_allowed(service.url)
    service.push(Reply(status=200, body=f"<html>{SECRET}</html>"))
    result = await run_one(bus, tier, env)
    assert result.status is TaskStatus.FAILED
    assert SECRET not in result.model_dump_json()
    letters = await bus.dead_letters()
    assert all(SECRET not in d.dead_letter.model_dump_json() for d in letters)


async def test_loom_worker_refuses_an_unlisted_endpoint_before_connecting(
    service: FakeLLMServer, tmp_path: Path
) -> None:
    """``loom worker`` exits with a clear message; the service receives nothing."""
    config = tmp_path / "classifier.yaml"
    config.write_text(yaml.safe_dump(worker_spec().model_dump(mode="json", exclude_none=True)))
    tier = TierDefinition(name="standard", backend="openai", model="m", base_url=service.url, api_key_env="K")
    env: dict[str, Any] = {
        **os.environ,
        "LOOM_TIER_CONFIG": tier.model_dump_json(),
        "K": API_KEY,
        "LOOM_NATS_URL": "nats://127.0.0.1:1",
        "LOOM_METRICS_PORT": "0",
    }
    env.pop("LOOM_MODEL_ENDPOINTS", None)
    env.pop("LOOM_LOCAL_MODE", None)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "loom.cli.main", "worker", "--config", str(config), "--tier", "standard"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "is not in modelEndpoints.allowedUrls" in done.stderr
    assert API_KEY not in done.stderr + done.stdout
    assert service.requests == [] and service.headers == []
