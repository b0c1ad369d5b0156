"""Distributed tracing against a real trace backend (Jaeger, OTLP/HTTP): the sample ``doc-analysis``
pipeline run by real router, worker and pipeline processes with a fake model provider, and a task
redelivered after its worker is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.support.endpoints import loopback_allowed
from tests.support.jaeger import Jaeger, Span, jaeger
from tests.support.processes import LoomProcesses, loom_procs, poll, write_yaml

from loom.api.router_policy import TierDefinition
from loom.bus import Bus
from loom.settings import NatsSettings

pytestmark = pytest.mark.integration
__all__ = ["jaeger", "loom_procs"]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "config" / "samples"
WORKERS = (
    "worker-doc-extractor",
    "worker-doc-classifier",
    "worker-doc-summarizer",
    "worker-report-assembler",
)


def _answer(body: dict[str, Any], classifier_calls: list[int]) -> Reply:
    """The model's answers: the classifier's first breaks the output contract (a schema retry)."""
    system = " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")
    if "categories" in system.lower():
        classifier_calls.append(1)
        category = "memo" if len(classifier_calls) == 1 else "report"  # "memo" is not in the enum
        return Reply(json={"category": category}, prompt_tokens=40, completion_tokens=5)
    return Reply(
        json={"summary": "Acme sent a report.", "entities": ["Acme"]}, prompt_tokens=60, completion_tokens=12
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    calls: list[int] = []
    server = FakeLLMServer("openai", default=lambda body: _answer(body, calls), model="fake-model")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _env(jaeger: Jaeger, fake: FakeLLMServer) -> dict[str, str]:
    tier = TierDefinition(
        name="local", backend="openai", model="fake-model", base_url=fake.url, api_key_env="FAKE_KEY"
    )
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "LOOM_TIER_CONFIG": tier.model_dump_json(),
        "FAKE_KEY": "sk-fake",
        **loopback_allowed(fake.url),
    }


def _submit(nats_url: str, env: dict[str, str], *args: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """``loom submit ... --wait`` as a process; returns the trace id it printed and the run."""
    done = subprocess.run(
        [sys.executable, "-m", "loom.cli.main", "submit", *args, "--wait", "--timeout", "120"],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "LOOM_NATS_URL": nats_url},
        timeout=180,
        cwd=REPO,
    )
    m = re.search(r"^trace ([0-9a-f]{32})$", done.stderr, re.MULTILINE)
    assert m, done.stderr
    return m.group(1), done


async def _trace(jaeger: Jaeger, trace_id: str, complete: Any) -> list[Span]:
    spans: list[Span] = []

    def ready() -> bool:
        spans[:] = jaeger.trace(trace_id)
        return bool(complete(spans))

    await poll(ready, timeout=30, interval=0.3)
    return spans


def _one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


async def test_one_doc_analysis_goal_is_one_trace_with_every_stage_hop_task_and_model_call(
    jaeger: Jaeger, fake: FakeLLMServer, loom_procs: LoomProcesses
) -> None:
    env = _env(jaeger, fake)
    workers = [SAMPLES / f"{w}.yaml" for w in WORKERS]
    started = [
        loom_procs.spawn(
            "router",
            "--config",
            str(SAMPLES / "router-policy.yaml"),
            *map(str, workers),
            env=env,
            ready=False,
        )
    ]
    started += [loom_procs.spawn("worker", "--config", str(w), env=env, ready=False) for w in workers]
    started.append(
        loom_procs.spawn(
            "pipeline", "--config", str(SAMPLES / "pipeline-doc-analysis.yaml"), env=env, ready=False
        )
    )
    for p in started:
        p.wait_ready(60)

    text = (SAMPLES / "example.txt").read_text()
    trace_id, done = await asyncio.to_thread(
        _submit,
        loom_procs.nats_url,
        env,
        "Analyse this",
        "--pipeline",
        "doc-analysis",
        "--context",
        f"text={text}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'"trace_id": "{trace_id}"' in done.stdout  # the goal result names its trace

    stages = ("extract", "classify", "summarise", "report")
    expected = {"submit", "pipeline doc-analysis", *(f"stage {s}" for s in stages), "schema retry"}
    spans = await _trace(
        jaeger,
        trace_id,
        lambda sp: (
            expected <= {s.name for s in sp}
            and sum(s.name == "route" for s in sp) >= 4
            and sum(s.name.startswith("task ") for s in sp) >= 4
            and sum(s.name == "chat fake-model" for s in sp) >= 3
        ),
    )
    by_id = {s.span_id: s for s in spans}
    root = _one(spans, "submit")
    assert root.parent_id is None and root.service == "loom-submit"
    pipeline = _one(spans, "pipeline doc-analysis")
    assert pipeline.parent_id == root.span_id and pipeline.service == "loom-pipeline-doc-analysis"
    worker_of = dict(
        zip(stages, ("doc-extractor", "doc-classifier", "doc-summarizer", "report-assembler"), strict=True)
    )
    tasks: dict[str, Span] = {}
    for stage in stages:
        span = _one(spans, f"stage {stage}")
        assert span.parent_id == pipeline.span_id
        (route,) = [s for s in spans if s.name == "route" and s.parent_id == span.span_id]
        assert route.service == "loom-router" and route.tags["messaging.message.delivery_count"] == 1
        (task,) = [s for s in spans if s.name.startswith("task ") and s.parent_id == route.span_id]
        assert task.name == f"task {worker_of[stage]}"
        tasks[stage] = task

    chats = [s for s in spans if s.name == "chat fake-model"]
    assert len(chats) == 3  # summarise once, classify twice (its first answer broke the contract)
    for chat in chats:
        t = chat.tags
        assert t["gen_ai.operation.name"] == "chat" and t["gen_ai.provider.name"] == "openai"
        assert t["gen_ai.request.model"] == "fake-model" and t["gen_ai.response.model"] == "fake-model"
        assert t["gen_ai.response.finish_reasons"] in ('["stop"]', "stop", ["stop"])
        assert "gen_ai.output.messages" not in t  # content only when enabled
    summarise_chat = [c for c in chats if c.parent_id == tasks["summarise"].span_id]
    assert len(summarise_chat) == 1
    assert (
        summarise_chat[0].tags["gen_ai.usage.input_tokens"],
        summarise_chat[0].tags["gen_ai.usage.output_tokens"],
    ) == (60, 12)
    retry = _one(spans, "schema retry")
    assert retry.parent_id == tasks["classify"].span_id and retry.tags["loom.output.attempt"] == 2
    first, second = sorted(
        (c for c in chats if c not in summarise_chat), key=lambda c: c.parent_id == retry.span_id
    )
    assert first.parent_id == tasks["classify"].span_id and second.parent_id == retry.span_id
    assert all(by_id.get(s.parent_id or "") is not None for s in spans if s is not root)  # one connected tree

    # The audit trail of the same goal: one record per stage task and one for the goal, all in this trace.
    bus = await Bus.connect(NatsSettings(url=loom_procs.nats_url), ensure_streams=False)
    try:
        records: list[Any] = []

        async def all_written() -> bool:
            records[:] = [r for r in await bus.audit_records() if r.trace_id == trace_id]
            return len(records) >= 5

        await poll(all_written, timeout=20)
    finally:
        await bus.close()
    (goal,) = [r for r in records if r.kind == "goal"]
    assert (goal.outcome, goal.pipeline, goal.role) == ("completed", "doc-analysis", "pipeline")
    stage_records = {r.worker_type: r for r in records if r.kind == "task"}
    assert set(stage_records) == set(worker_of.values())
    classify = stage_records["doc-classifier"]
    assert (classify.model, classify.tokens_in, classify.tokens_out) == ("fake-model", 80, 10)  # two calls
    assert goal.tokens_in == 80 + 60 and goal.tokens_out == 10 + 12


async def test_a_task_redelivered_after_a_worker_sigkill_shows_both_attempts_in_one_trace(
    jaeger: Jaeger, fake: FakeLLMServer, loom_procs: LoomProcesses, tmp_path: Path
) -> None:
    import yaml

    env = _env(jaeger, fake)
    doc = yaml.safe_load((SAMPLES / "worker-doc-classifier.yaml").read_text())
    doc["spec"]["timeoutSeconds"] = 3  # ack wait = 3 s + the 1 s grace below
    config = write_yaml(tmp_path, "classifier", doc)
    loom_procs.spawn("router", "--config", str(config), env=env)
    first = loom_procs.spawn("worker", "--config", str(config), "--ack-grace-seconds", "1", env=env)
    fake.push(Reply(json={"category": "report"}, delay=120))  # the first attempt hangs in the model call

    submitting = asyncio.ensure_future(
        asyncio.to_thread(
            _submit, loom_procs.nats_url, env, "--worker-type", "doc-classifier", "--payload", '{"text": "x"}'
        )
    )
    await poll(lambda: fake.in_flight == 1, timeout=30)
    await poll(lambda: _received(jaeger, "loom-worker-doc-classifier-local"), timeout=30, interval=0.3)
    first.kill()
    loom_procs.spawn("worker", "--config", str(config), "--ack-grace-seconds", "1", env=env)
    trace_id, done = await submitting
    assert done.returncode == 0, done.stdout + done.stderr

    spans = await _trace(
        jaeger,
        trace_id,
        lambda sp: (
            sum(s.name == "receive doc-classifier" for s in sp) >= 2
            and any(s.name == "task doc-classifier" for s in sp)
        ),
    )
    receives = sorted(
        (s for s in spans if s.name == "receive doc-classifier"),
        key=lambda s: s.tags["messaging.message.delivery_count"],
    )
    assert [s.tags["messaging.message.delivery_count"] for s in receives] == [1, 2]
    route = _one(spans, "route")
    assert all(s.parent_id == route.span_id for s in receives)  # both attempts hang off the one routing
    (task,) = [s for s in spans if s.name == "task doc-classifier"]  # the killed attempt never ended its span
    assert task.tags["messaging.message.delivery_count"] == 2 and task.parent_id == route.span_id


def _received(jaeger: Jaeger, service: str) -> bool:
    try:
        doc = jaeger._get(
            f"/api/traces?service={service}&operation=receive%20doc-classifier&lookback=1h&limit=5"
        )
    except OSError:
        return False
    return bool(doc.get("data"))


async def test_time_waiting_on_a_rate_limit_is_its_own_span(
    jaeger: Jaeger, loom_procs: LoomProcesses, tmp_path: Path
) -> None:
    import json

    from tests.support.processes import echo_worker

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        json.dumps(
            {
                "apiVersion": "loom.dev/v1alpha1",
                "kind": "RouterPolicy",
                "metadata": {"name": "default"},
                "spec": {
                    "tiers": [{"name": "limited"}],
                    "rateLimits": {"limited": {"requestsPerMinute": 1}},
                    "onLimit": {"maxWaitSeconds": 1},
                },
            }
        )
    )
    echo = echo_worker(tmp_path, "echo", tiers=["limited"], default_model_tier="limited")
    loom_procs.spawn("router", "--config", str(policy), str(echo), env=env)
    loom_procs.worker(echo, "limited", env=env)
    args = ("--worker-type", "echo", "--tier", "limited")
    _, first = await asyncio.to_thread(_submit, loom_procs.nats_url, env, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    trace_id, second = await asyncio.to_thread(_submit, loom_procs.nats_url, env, *args)
    assert second.returncode == 1 and '"error_code": "rate_limited"' in second.stdout  # waited 1 s, refused

    spans = await _trace(
        jaeger, trace_id, lambda sp: {"submit", "route", "admission wait"} <= {s.name for s in sp}
    )
    route, wait = _one(spans, "route"), _one(spans, "admission wait")
    assert wait.parent_id == route.span_id and wait.tags["loom.tier"] == "limited"
    assert route.parent_id == _one(spans, "submit").span_id
    assert not any(s.name.startswith("task ") for s in spans)  # it never reached the worker
