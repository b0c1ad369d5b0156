"""Orchestrator configs and in-process services for tests, with a scripted fake model over real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from loom.api.router_policy import TierDefinition
from loom.bus import Bus
from loom.llm.factory import build_model_client
from loom.orchestrator.config import load_config
from loom.orchestrator.service import OrchestratorOptions, OrchestratorService
from loom.settings import NatsSettings
from tests.fakes.llm_server import Reply
from tests.support.endpoints import loopback_allowed
from tests.support.pipelines import running_service

WORKERS: list[dict[str, Any]] = [
    {
        "name": "summarizer",
        "description": "Summarizes a text.",
        "system_prompt": "Summarize.",
        "input_schema": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
            "additionalProperties": False,
        },
    },
    {
        "name": "counter",
        "description": "Counts items.",
        "worker_kind": "processor",
        "processing_backend": "loom.contrib.noop.EchoBackend",
        "input_schema": {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}},
    },
]


def write_config(tmp: Path, llm_url: str, **overrides: Any) -> Path:
    """An orchestrator YAML using the fake model at ``llm_url`` (OpenAI wire format)."""
    doc: dict[str, Any] = {
        "name": "brain",
        "workers": WORKERS,
        "decomposer": {
            "tier": {
                "name": "planner",
                "backend": "openai",
                "model": "fake-planner",
                "base_url": llm_url,
                "max_retries": 0,
            },
            "feedback_rounds": 1,
        },
        "synthesis": "merge",
        "checkpoint": {"backend": "kv", "token_threshold": 100_000},
        "timeouts": {"subtask_seconds": 30, "goal_seconds": 120},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = doc[key] | value
        else:
            doc[key] = value
    path = tmp / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def system_of(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")


def planner(
    plans: list[dict[str, Any]], answer: dict[str, Any] | None = None
) -> Callable[[dict[str, Any]], Reply]:
    """A responder: the n-th planning request of a conversation gets ``plans[n]``; synthesis ``answer``."""

    def respond(body: dict[str, Any]) -> Reply:
        system = system_of(body)
        if "planner" in system:
            users = sum(1 for m in body["messages"] if m.get("role") == "user")
            return Reply(json=plans[min(users, len(plans)) - 1])
        if "synthesizer" in system:
            return Reply(json=answer or {"answer": "no answer scripted"})
        return Reply(status=400, error=f"unexpected request: {json.dumps(body)[:200]}")

    return respond


@contextlib.asynccontextmanager
async def running_orchestrator(
    config_path: Path, nats_url: str, options: OrchestratorOptions | None = None
) -> AsyncIterator[OrchestratorService]:
    config, catalog = load_config(config_path)
    tier: TierDefinition = config.decomposer.tier
    env = {**os.environ, **loopback_allowed(tier.base_url)} if tier.base_url else None
    provider = build_model_client(tier, env)  # the fake planner model runs on loopback
    bus = await Bus.connect(NatsSettings(url=nats_url, name="test-orchestrator"), role="orchestrator")
    try:
        service = OrchestratorService(config, catalog, bus, lambda: provider, options)
        async with running_service(service, "orchestrator") as running:
            yield running
    finally:
        await bus.close()
