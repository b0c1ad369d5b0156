"""The model call's GenAI span: recorded with its request and usage attributes where spans are
exported, and nothing built for it where they are not (the worker's CPU per task)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import asyncio, sys
from loom import tracing
from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.llm.factory import build_model_client
from loom.messages import TaskMessage
from loom.worker.llm_engine import LLMEngine
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.support.endpoints import loopback_allowed

assert tracing.setup("loom-test") == (sys.argv[1] == "on")

async def main():
    answer = Reply(json={"label": "x"}, prompt_tokens=21)
    async with FakeLLMServer("openai", default=lambda _: answer) as fake:
        tier = TierDefinition(name="standard", backend="openai", model="m-1", base_url=fake.url)
        env = loopback_allowed(fake.url) | {"OPENAI_API_KEY": "sk-test"}
        spec = WorkerSpec(name="w", system_prompt="Label it.", output_schema={"type": "object"})
        engine = LLMEngine(spec, tier, provider=build_model_client(tier, env=env), env=env)
        with tracing.span("task"):
            outcome = await engine.run(TaskMessage(worker_type="w", payload={"text": "hi"}))
        await engine.close()
        assert outcome.output == {"label": "x"}, outcome

asyncio.run(main())
tracing.flush()
"""

ROOT = Path(__file__).resolve().parents[3]


def run(tracing: str) -> str:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console" if tracing == "on" else "none"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, tracing],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def spans(stdout: str) -> list[dict[str, object]]:
    """The console exporter's spans (one JSON document each)."""
    decoder, out, at = json.JSONDecoder(), [], 0
    text = stdout.strip()
    while at < len(text):
        doc, end = decoder.raw_decode(text, at)
        out.append(doc)
        at = end
        while at < len(text) and text[at].isspace():
            at += 1
    return out


def test_the_chat_span_carries_request_and_usage_where_spans_are_exported() -> None:
    chat = [s for s in spans(run("on")) if str(s["name"]).startswith("chat ")]
    assert len(chat) == 1
    attrs = chat[0]["attributes"]
    assert isinstance(attrs, dict)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "m-1"
    assert attrs["gen_ai.usage.input_tokens"] == 21
    assert attrs["gen_ai.response.model"] == "m-1"  # the fake answers with the model asked for


def test_no_span_where_none_are_exported() -> None:
    assert run("off").strip() == ""
